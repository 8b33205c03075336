"""Device sharing (SLS-RULES "Several devices and sharing"): client services link a device
directly; the portal's request is proved by the owner, may wait for compliance approval and
can be cancelled. The rules themselves are :mod:`sls_core.rules.sharing`; the account gate
is the one every way in uses. Never logs a secret or a code.
"""

from __future__ import annotations

from collections.abc import Callable

from sls_core.devices import DeviceState
from sls_core.errors import InvalidInputError
from sls_core.login.context import LoginContext, WriteTx
from sls_core.login.directory import DeviceEntry
from sls_core.login.pipeline import ResponsePlan
from sls_core.outcome import LoginOutcome
from sls_core.rules import sharing
from sls_core.store import SharingRow, UserRow
from sls_core.values import Access, Identity, Purpose, SharingError, SharingRequest, SharingState

__all__ = ["DeviceSharing"]


class DeviceSharing:
    """The sharing part of :class:`~sls_core.login.SecureLogin` (a mixin over its context)."""

    context: LoginContext

    def share_device(
        self,
        owner: str,
        device_id: int,
        with_username: str,
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Lets ``with_username`` answer with ``owner``'s physical device, when SLS-RULES
        allows it: same holder, no temporary device among them, and the shared device is
        the most secure any of them holds."""
        with self.context.write() as tx:
            first = self.context.user(owner, field="owner")
            second = self.context.user(with_username, field="with_username")
            entry = self.context.device_of(first, device_id)
            self._check_sharing(tx, first, second, entry, self.context.clock.now())
            tx.store.link(second.id, device_id)
            if before_commit is not None:
                before_commit()

    def request_sharing(
        self,
        owner: str,
        device_id: int,
        with_username: str,
        *,
        token: str,
        response: str,
        needs_approval: bool = False,
        before_commit: Callable[[SharingRequest | SharingError], None] | None = None,
    ) -> SharingRequest:
        """Portal self-service: ``with_username`` asks to answer with ``owner``'s physical
        device. The owner proves possession by answering a ``Purpose.SHARING`` challenge
        from that device (a wrong answer is a failed attempt, like any other); the rules of
        :func:`sls_core.rules.sharing.check_sharing` must hold. The requester's own active
        physical devices are set aside (suspended). With ``needs_approval`` the request
        waits for compliance (:meth:`approve_sharing`); either way it can be cancelled.
        ``before_commit`` is told the request, or the refusal of a proof that failed (the
        failed attempt counts, so it commits too, and the refusal is raised after)."""
        now = self.context.clock.now()
        decided: SharingRequest | SharingError
        with self.context.write() as tx:
            first = self.context.user(owner, field="owner")
            second = self.context.user(with_username, field="with_username")
            entry = self.context.device_of(first, device_id)
            self._check_sharing(tx, first, second, entry, now)
            if tx.store.open_sharing(second.id, device_id) is not None:
                raise SharingError(SharingError.ALREADY_REQUESTED)
            plan = ResponsePlan(
                self.context,
                [owner],
                [token],
                [response],
                Access.PORTAL,
                Purpose.SHARING,
                None,
                now,
            )
            plan.resolve()
            # The proof must come from the device to share: any other is no proof, and is
            # refused before it could count as the owner's success.
            plan.require_device(0, device_id)
            plan.evaluate()
            plan.settle(tx.store)
            outcome = LoginOutcome(int(plan.out[0]))
            if outcome is LoginOutcome.OK:
                set_aside = tuple(
                    e.row.id
                    for e in self.context.devices_of(second.id)
                    if e.type.is_physical
                    and e.row.id != device_id
                    and self.context.effective_state(e, now) is DeviceState.ACTIVE
                )
                for aside in set_aside:
                    tx.store.update_device(aside, state=DeviceState.SUSPENDED.value)
                state = SharingState.PENDING if needs_approval else SharingState.ACTIVE
                if state is SharingState.ACTIVE:
                    tx.store.link(second.id, device_id)
                request_id = tx.store.insert_sharing(
                    SharingRow(0, first.id, second.id, device_id, state.value, set_aside, now)
                )
                decided = SharingRequest(
                    request_id, owner, with_username, device_id, state, set_aside
                )
            else:
                decided = SharingError(f"{SharingError.NO_PROOF} ({outcome.name.lower()})")
            if before_commit is not None:
                before_commit(decided)
        if isinstance(decided, SharingError):
            raise decided
        return decided

    def approve_sharing(
        self,
        request_id: int,
        *,
        before_commit: Callable[[SharingRequest], None] | None = None,
    ) -> SharingRequest:
        """Compliance approves a pending request: the shared device now serves both.
        ``before_commit`` is told the request as decided."""
        return self._decide_sharing(request_id, SharingState.ACTIVE, None, before_commit)

    def cancel_sharing(
        self,
        request_id: int,
        *,
        username: str | None = None,
        before_commit: Callable[[SharingRequest], None] | None = None,
    ) -> SharingRequest:
        """Cancels a pending or active request: the link goes and the devices the requester
        set aside are active again. ``username`` (the portal's user) must be the owner or
        the requester; client services cancel any request (``None``). ``before_commit`` is
        told the request as decided."""
        return self._decide_sharing(request_id, SharingState.CANCELLED, username, before_commit)

    def _decide_sharing(
        self,
        request_id: int,
        to: SharingState,
        username: str | None = None,
        before_commit: Callable[[SharingRequest], None] | None = None,
    ) -> SharingRequest:
        if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 1:
            raise InvalidInputError("request_id", "must be a positive integer")
        now = self.context.clock.now()
        with self.context.write() as tx:
            row = tx.store.sharing(request_id)
            if username is not None and row is not None:
                who = self.context.user(username).id
                if who not in (row.owner_id, row.requester_id):
                    row = None  # another user's request: as if there were none
            allowed = (
                (SharingState.PENDING,)
                if to is SharingState.ACTIVE
                else (
                    SharingState.PENDING,
                    SharingState.ACTIVE,
                )
            )
            if row is None or SharingState(row.state) not in allowed:
                raise SharingError(SharingError.NOT_PENDING)
            users = self.context.directory.user_by_id
            owner_row, requester_row = users[row.owner_id], users[row.requester_id]
            if to is SharingState.ACTIVE:
                # Approval comes later: the rules and the requester's account are judged
                # again as they are now.
                shared = self.context.directory.devices[row.device_id]
                self._check_sharing(tx, owner_row, requester_row, shared, now)
                tx.store.link(row.requester_id, row.device_id)
            else:
                tx.store.unlink(row.requester_id, row.device_id)
                for aside in row.set_aside:
                    # Only what this request set aside and is still set aside comes back:
                    # a device revoked, replaced or lost since stays out of service.
                    device = self.context.directory.devices.get(aside)
                    if (
                        device is not None
                        and not requester_row.closed
                        and device.row.state == DeviceState.SUSPENDED.value
                        and aside not in self.context.directory.replaced_by
                    ):
                        tx.store.update_device(aside, state=DeviceState.ACTIVE.value)
            tx.store.update_sharing(request_id, state=to.value, decided_at=now)
            decided = SharingRequest(
                request_id,
                owner_row.username,
                requester_row.username,
                row.device_id,
                to,
                row.set_aside,
            )
            if before_commit is not None:
                before_commit(decided)
        return decided

    def _check_sharing(
        self, tx: WriteTx, first: UserRow, second: UserRow, entry: DeviceEntry, now: float
    ) -> None:
        """The sharing rules, and the requester's account: a closed or locked user gets no
        device (SLS-RULES "One rule for every way in")."""
        self.context.refuse_issue(tx.store, second, "shared device")
        live = [
            other.type
            for user in (first, second)
            for other in self.context.devices_of(user.id)
            if other.row.id != entry.row.id
            and self.context.effective_state(other, now)
            in (DeviceState.ACTIVE, DeviceState.PENDING)
        ]
        sharing.check_sharing(
            entry.type, Identity(**first.identity), Identity(**second.identity), live
        )
