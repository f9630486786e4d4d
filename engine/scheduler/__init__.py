"""Schedules: cron and interval schedules with time zones, one run per slot, no polling.

- `engine.scheduler.specs`: schedules as written and stored, their ids;
- `engine.scheduler.timing`: fire times (pure; DST handled on the zone's wall clock);
- `engine.scheduler.catchup`: what to do with slots missed while no scheduler ran (pure);
- `engine.scheduler.store`: the database work (pending runs, cancelling, Late, pausing one);
- `engine.scheduler.service`: the `Scheduler` the server runs;
- `engine.scheduler.client`: reaching it from the CLI.

Nothing is imported here: `engine.schemas` imports `specs` while it loads.
"""
