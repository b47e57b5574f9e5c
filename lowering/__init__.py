"""Backend lowering (being filled in)."""

__all__: list[str] = []
