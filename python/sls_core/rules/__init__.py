"""The SLS rules as pure functions and numbers, one file per rule family.

Each module cites the section of SLS-RULES it implements and holds no I/O: no store, no
clock of its own, no kernel call. The decision pipeline (:mod:`sls_core.login.pipeline`)
and the services call these functions; nothing else restates a rule or its numbers.

* :mod:`~sls_core.rules.lockout`: "Lockout" (10 failures in 24 hours, what counts).
* :mod:`~sls_core.rules.access`: "One rule for every way in" (account, device state, purpose).
* :mod:`~sls_core.rules.temporary`: "Device life cycle" (passcode, online card, replacement).
* :mod:`~sls_core.rules.limits`: "What the strength of the device allows" and issuance.
* :mod:`~sls_core.rules.sharing`: "Several devices and sharing".
* :mod:`~sls_core.rules.usernames`: "Usernames".
* :mod:`~sls_core.rules.quotas`: abuse limits (our numbers: SLS-RULES gives none).
"""
