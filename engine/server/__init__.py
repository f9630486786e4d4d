"""`flowrelay server`: the engine service behind the broker, with its outbox relay, dispatch
timer and heartbeat monitor."""
