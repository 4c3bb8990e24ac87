"""Deployment on real Flower processes (flwr 1.41): trial TLS certificates and SuperNode
authentication keys (:mod:`.credentials`), the ``flower-superlink`` / ``flower-supernode``
command lines (:mod:`.commands`), the ``flwr`` CLI's SuperLink connection
(:mod:`.connection`) and the environment of local Flower processes (:mod:`.processes`).

What flwr 1.41 expects (read from its source):

* One SuperLink port serves the Fleet, Control and Runtime APIs over HTTPS
  (``--host``/``--port``); TLS needs ``--ssl-ca-certfile``, ``--ssl-certfile`` and
  ``--ssl-keyfile`` together. Its own ``flower-superexec`` verifies the certificate at
  ``127.0.0.1:<port>``, so the server certificate must name 127.0.0.1.
* ``--enable-supernode-auth`` (refused with ``--insecure``): a SuperNode may connect
  only with a key registered by ``flwr supernode register KEY.pub <connection>``.
  Keys are EC on a NIST curve; the SuperNode reads an OpenSSH private key
  (``--auth-supernode-private-key``), registration an OpenSSH public key.
* Runtime dependency installation (``uv sync`` of the app's dependencies in a fresh
  environment) is on by default in the SuperLink (``--disable-runtime-dependency-installation``
  turns it off) and off by default in the SuperNode (``--allow-runtime-dependency-installation``
  would turn it on); both stay off here, for air-gapped machines.
* ``flwr run . <connection>`` reads ``[superlink.<connection>]`` (``address``,
  ``root-certificates`` as an absolute path, or ``insecure = true``) from
  ``$FLWR_HOME/config.toml`` (default ``~/.flwr``); ``[tool.flwr.federations]`` in
  pyproject.toml is legacy and ``flwr run`` would migrate it out of the file.
"""


class DeployError(ValueError):
    """Deployment settings or files that cannot be used."""
