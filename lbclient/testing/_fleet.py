"""A group of fake backends with a ready-made lbclient target string."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

from lbclient.testing._backend import Backend


class Fleet:
    """``n`` running :class:`Backend` instances on 127.0.0.1.

    Contract: the constructor starts every backend (if one fails, those already started
    are stopped and the error propagates). ``backend_kwargs`` go to every ``Backend``; an
    integer ``seed`` becomes ``seed + i`` for the i-th backend so their fault draws differ.
    Order is creation order. ``stop()`` is idempotent; stopped backends keep their ports.
    ``aio=True`` serves every backend with a grpc.aio server instead
    (:class:`~lbclient.testing._aio_backend.AioBackend`: same controls and replies).
    """

    def __init__(
        self, n: int = 3, *, names: Sequence[str] | None = None, aio: bool = False,
        **backend_kwargs: Any
    ) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if names is not None and len(names) != n:
            raise ValueError(f"got {len(names)} names for {n} backends")
        self._kwargs = backend_kwargs
        self._backend_class = Backend
        if aio:
            from lbclient.testing._aio_backend import AioBackend

            self._backend_class = AioBackend
        self._backends: list[Backend] = []
        try:
            for i in range(n):
                self.add(names[i] if names is not None else None)
        except BaseException:
            self.stop()
            raise

    def add(self, name: str | None = None, **backend_kwargs: Any) -> Backend:
        """Start one more backend (fleet kwargs overridden by ``backend_kwargs``); return it."""
        kwargs = {**self._kwargs, **backend_kwargs}
        seed = kwargs.get("seed")
        if isinstance(seed, int) and "seed" not in backend_kwargs:
            kwargs["seed"] = seed + len(self._backends)
        backend = self._backend_class(name, **kwargs)
        backend.start()
        self._backends.append(backend)
        return backend

    @property
    def backends(self) -> list[Backend]:
        """A copy of the backend list, in creation order."""
        return list(self._backends)

    @overload
    def __getitem__(self, index: int) -> Backend: ...
    @overload
    def __getitem__(self, index: slice) -> list[Backend]: ...
    def __getitem__(self, index: int | slice) -> Backend | list[Backend]:
        return self._backends[index]

    def __len__(self) -> int:
        return len(self._backends)

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends))

    @property
    def addresses(self) -> list[str]:
        """``"127.0.0.1:PORT"`` of every backend (running or not), in order."""
        return [b.address for b in self._backends]

    @property
    def target(self) -> str:
        """The lbclient target for all backends: ``"ipv4:127.0.0.1:p1,127.0.0.1:p2,..."``."""
        return "ipv4:" + ",".join(self.addresses)

    def by_address(self, address: str) -> Backend:
        """The backend listening on ``address``; ``KeyError`` if none."""
        for backend in self._backends:
            if backend.address == address:
                return backend
        raise KeyError(address)

    def by_name(self, name: str) -> Backend:
        """The backend called ``name``; ``KeyError`` if none."""
        for backend in self._backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    def calls(self) -> dict[str, int]:
        """address -> Echo calls received."""
        return {b.address: b.calls for b in self._backends}

    def reset_counters(self) -> None:
        for backend in self._backends:
            backend.reset_counters()

    def stop(self, grace: float | None = None) -> None:
        """Stop every backend."""
        for backend in self._backends:
            backend.stop(grace)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Fleet {self.addresses}>"
