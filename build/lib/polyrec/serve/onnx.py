"""The ranking network as ONNX: ``polyrec export RUN_DIR --onnx`` and scoring with onnxruntime.

The graph maps catalog indices (user [B], item [B], int64, any B) to every task's output [B, T]
(logits for binary tasks, values for regression), as :meth:`MultiTaskModel.forward` does without
a row context. The run's feature tables, embeddings and history are constants inside it, so the
catalog is fixed at export time: export again after adding items or users.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from polyrec.errors import DataError, RunError, optional_import

ONNX_FILE = "model.onnx"


class _Indices(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.model(user, item)


def export_onnx(model: torch.nn.Module, path: Path, n_users: int, n_items: int, overwrite: bool = False) -> Path:
    """Write ``model`` (scoring ``n_users`` × ``n_items``, kept in the graph's metadata) as ONNX to
    ``path`` (a private partial file moved into place: the file appears complete or not at all);
    an existing file is replaced only with ``overwrite``."""
    if model.item_encoder is not None:
        raise DataError("export --onnx: this run fine-tunes the language model (text.mode lora), which the ONNX "
                        "graph does not hold; export a run with text.mode frozen")
    optional_import("onnxscript", "onnx")   # what torch's exporter writes the graph with
    if path.exists() and not (overwrite and _exported_by_polyrec(path)):
        raise RunError(f"{path} already exists; polyrec replaces only a graph it exported itself, with --overwrite"
                       if overwrite else f"{path} already exists; pass --overwrite to replace an earlier export")
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    # a batch size no other dimension of the model has, so the exporter cannot mistake them for one
    example = (torch.zeros(97, dtype=torch.long), torch.zeros(97, dtype=torch.long))
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        # the exporter narrates each step on stdout and warns about optional packages it does not need
        quiet.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Indices(model.eval()), example, input_names=["user", "item"],
                                        output_names=["outputs"], dynamic_shapes=({0: batch}, {0: batch}),
                                        dynamo=True, verbose=False)
        program.model.metadata_props.update({"polyrec.n_users": str(n_users), "polyrec.n_items": str(n_items)})
        program.save(str(partial))
        os.replace(partial, path)
    finally:
        quiet.setLevel(level)
        partial.unlink(missing_ok=True)
    return path


def _exported_by_polyrec(path: Path) -> bool:
    """Whether ``path`` is an ONNX graph that :func:`export_onnx` wrote (its metadata says so)."""
    onnx = optional_import("onnx", "onnx")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:   # not ONNX at all: onnx raises its own decode errors
        return False
    return any(prop.key == "polyrec.n_items" for prop in graph.metadata_props)


class OnnxScorer:
    """Scores (user, item) index pairs with an exported graph in onnxruntime: [B, T] outputs."""

    def __init__(self, path: Path, n_users: int, n_items: int, threads: int = 1):
        """``n_users`` / ``n_items``: the catalog the graph must have been exported with."""
        ort = optional_import("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:   # onnxruntime raises its own exception types for unreadable graphs
            raise RunError(f"{path}: not a readable ONNX graph ({err}); export it again with "
                           "`polyrec export RUN_DIR --onnx`") from None
        self.path = path
        meta = self.session.get_modelmeta().custom_metadata_map
        exported = (int(meta.get("polyrec.n_users", -1)), int(meta.get("polyrec.n_items", -1)))
        if exported != (n_users, n_items):
            raise RunError(f"{path} scores {exported[0]} users × {exported[1]} items, but the run now has {n_users} × "
                           f"{n_items} (users or items were added since): export it again")

    def __call__(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        outputs = self.session.run(None, {"user": user.numpy().astype(np.int64), "item": item.numpy().astype(np.int64)})
        return torch.from_numpy(outputs[0])
