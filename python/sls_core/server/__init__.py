"""The gRPC server of sls_core (``sls-core serve``): login gateways verify second factors,
client services administer users and devices, over the sls.v1 API in ``proto/sls/v1``.

* :mod:`sls_core.server.config` - the TOML config and its validation;
* :mod:`sls_core.server.servicers` - thin servicers over :class:`sls_core.login.SecureLogin`;
* :mod:`sls_core.server.interceptors` - authorization by role, metrics, access log;
* :mod:`sls_core.server.audit` - one JSON line per decision;
* :mod:`sls_core.server.app` - the grpc.aio server, health, reflection, TLS, shutdown;
* :mod:`sls_core.server.main` - the command line and the worker processes.

Nothing in this package logs, audits or returns in a status a secret, code, response, PIN,
passcode or token.
"""

from sls_core.server.config import ConfigError, ServerConfig, TlsConfig, load_config

__all__ = ["ConfigError", "ServerConfig", "TlsConfig", "load_config"]
