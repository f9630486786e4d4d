"""The flow and task runtime: decorators, run engines, futures, context, the engine loop."""
