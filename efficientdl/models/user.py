"""Your own model: an ``nn.Module`` built by your code, named by an import path ``MODULE:CALLABLE``.

The convention of ``uvicorn app:main``: ``pkg.mod:build`` imports ``pkg.mod`` (with the
current directory first on ``sys.path``, as ``python -m`` has it) and calls ``build`` with
keyword arguments::

    model = build_user_model("mynet:build", {"width": 16}, num_classes=10)

A model built so carries ``edl_arch = {"import": "mynet:build", "kwargs": {...}}`` (the
keyword arguments it was called with), which checkpoints and compressed files record,
structural transforms included.  Loading a file never imports that code on its own:
:func:`efficientdl.models.rebuild` raises :class:`ModelCodeNeeded` unless the caller
names the model to build or says to trust the recorded one.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.imports import (IMPORT_PATH, accepted_keywords, import_callable, is_import_path,  # noqa: F401
                            one_line as _one_line, parse_import_path, parse_kwargs)
from ..errors import ModelError
#: keywords filled from the data when the callable names them and the caller did not give them
DATA_KEYWORDS = ("num_classes", "in_channels", "input_size")


class ModelCodeNeeded(ModelError):
    """A file's model is built by user code (or records no architecture) and the caller did not
    say which model to build or that the recorded code may be imported.

    Attributes:
        where: the file.
        spec: the recorded import path, or ``None`` when the file records no architecture.
    """

    def __init__(self, where: str, spec: str | None) -> None:
        self.where, self.spec = where, spec
        if spec is None:
            text = f"{where}: records no architecture; pass the model to load it into"
        else:
            text = (f"{where}: the model is built by user code {spec}, which loading a file never imports on "
                    f"its own; pass the model, or trust_model_code=True to import it")
        super().__init__(text)


def build_user_model(spec: str, kwargs: dict[str, Any] | None = None, **data: Any) -> nn.Module:
    """Import ``spec`` and call it with ``kwargs``; record how on the model.

    Args:
        spec: ``MODULE:CALLABLE`` returning an ``nn.Module``.
        kwargs: keyword arguments for the callable (JSON values).
        **data: ``num_classes``, ``in_channels``, ``input_size`` from the data; each is passed
            only when the callable names it as a parameter, it is not ``None`` and ``kwargs``
            does not give it.

    Returns:
        The model, with ``edl_arch = {"import": spec, "kwargs": every keyword it was called with}``.

    Raises:
        ModelError: the path does not import (see :func:`import_callable`), the call raises
            (its exception type and message on one line), or it returns no ``nn.Module``.
    """
    fn = import_callable(spec)
    call = dict(kwargs or {})
    for name in accepted_keywords(fn, DATA_KEYWORDS):
        if name not in call and data.get(name) is not None:
            call[name] = data[name]
    try:
        model = fn(**call)
    except Exception as e:      # user code: any error it raises
        raise ModelError(f"model {spec}({_kwargs_text(call)}) raised {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec} returned {type(model).__name__}, not a torch.nn.Module")
    model.edl_arch = {"import": spec.strip(), "kwargs": call}
    return model


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
