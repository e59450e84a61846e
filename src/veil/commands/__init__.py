"""The ``veil`` command's groups, one module each; ``veil.cli`` mounts them.

- ``common``   what every command shares: ``fail``, settings loading, the shared options
- ``node``     ``veil node`` (run a node), ``veil node rotate-key``, ``veil node keys``
- ``config``   ``veil config show``
- ``gateway``  ``veil gateway`` (the gateway alone)
- ``serve``    ``veil serve`` (gateway + one embedded node: the local demo)
- ``bench``    ``veil bench``

A command imports its heavy modules (the node, the gateway, the engines) only when it runs, after
``veil.extras`` has checked that their extra is installed: ``import veil.cli`` stays light.
"""
