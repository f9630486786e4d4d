"""A minimal flow: `flowrelay run examples/hello.py:hello --param name=Ada --execute`."""

from engine import flow, get_run_logger, task


@task
def greeting(name: str) -> str:
    return f"Hello, {name}!"


@flow
def hello(name: str = "world") -> str:
    message = greeting(name)
    get_run_logger().info(message)
    return message


if __name__ == "__main__":
    hello()
