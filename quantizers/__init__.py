"""Backend quantizers (being filled in)."""

__all__: list[str] = []
