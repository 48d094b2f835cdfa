"""The atenet node: the sans-I/O packet core (core.py) and the asyncio daemon around it."""
