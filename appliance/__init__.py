"""The whole appliance on one machine: `python -m appliance run|stop|status|logs`.

One supervisord, whose files all live in the state folder, runs a private
Redis, nginx, the relays and the workers, configured from the same templates
as a server (deploy/).
"""
