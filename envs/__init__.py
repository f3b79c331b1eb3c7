"""The environment maps, installed as the package ``rledger.maps`` (see ``envs/README.md``)."""
