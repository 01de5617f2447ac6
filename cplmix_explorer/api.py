"""The Python API in the shape single-cell users know (scvi-tools style)::

    model = CplMixVAE(adata, n_types=10, n_arms=2)
    model.train(steps=5000)
    model.write_results(adata)          # obs['cplmix_type'], obsm['X_cplmix_state'], ...
    model.save("run/")
    model = CplMixVAE.load("run/", adata)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .model.consensus import Consensus, consensus
from .analysis.embedding import BASIS, TYPES_AND_STATES, UMAP, CellMap, keep_map, map_key, run_map
from .analysis.names import (
    automatic_names,
    check_name,
    check_unique,
    names_payload,
    read_names_file,
    rename_result_file,
    resolve_type_index,
    write_names_file,
)
from .model.inference import Inference, infer, types_and_states
from .analysis.results import evaluate_inference, write_results
from .config import CplMixConfig
from .data.io import read_data
from .data.preprocess import PreparedData, Preprocessing, prepare
from .data.validate import drop_empty_cells
from .errors import CplmixError
from .files import RESULT_FILE
from .threads import apply_threads, resolve_threads
from .train.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_run_checkpoint,
    read_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from .train.device_data import DeviceData
from .device import resolve_device
from .train.engine import Trainer, TrainingResult, build_module, planned_steps, state_kl_warmup_steps
from .train.events import EventBus, TrainingControl
from .train.progress import ProgressBar


class CplMixVAE:
    """A coupled mixture VAE bound to a dataset.

    Parameters
    ----------
    adata: AnnData, an ``.h5ad`` path or a bundled dataset name.
    n_types, n_arms, state_dim: the main shape options; any other option of :class:`CplMixConfig` may be
        passed as a keyword (``lam=1.0``, ``likelihood="nb"``, ...) or as a ``config`` object.
    """

    def __init__(
        self,
        adata: AnnData | str | os.PathLike,
        n_types: int | None = None,
        n_arms: int | None = None,
        state_dim: int | None = None,
        *,
        config: CplMixConfig | None = None,
        _preprocessing: Preprocessing | None = None,
        _prepared: PreparedData | None = None,
        **options: Any,
    ):
        self.adata = read_data(adata)
        shape = {"n_types": n_types, "n_arms": n_arms, "state_dim": state_dim}
        self.config = (config.copy() if config is not None else CplMixConfig()).update(
            **{k: v for k, v in shape.items() if v is not None}, **options
        )
        #: cells without counts dropped from ``adata`` (``drop_empty_cells``); ``self.adata`` is then the rest
        self.dropped_empty_cells = 0
        if self.config.drop_empty_cells:
            layer = _preprocessing.layer if _preprocessing is not None else self.config.layer
            self.adata, self.dropped_empty_cells = drop_empty_cells(self.adata, layer)
        if _prepared is not None:  # prepared once by the caller (the app's training and pruning processes)
            self.prepared = _check_prepared_for(_prepared, self.adata, _preprocessing)
        else:
            self.prepared = prepare(self.adata, self.config, preprocessing=_preprocessing)
        self.module = build_module(self.config, self.prepared.n_genes, self.prepared.library_size)
        self.events = EventBus()
        self.step = 0
        self.history: TrainingResult | None = None
        self.augment_used: str | None = None
        #: steps over which the state KL weight rises to beta: the share ``state_kl_warmup`` of the first
        #: training call's schedule, kept for the calls and resumes that continue it (None before training)
        self.state_kl_warmup_steps: int | None = None
        #: the last training call's learning-rate decay steps [start, end) (engine.lr_decay_window)
        self.lr_decay_window: tuple[int, int] | None = None
        #: the initial partition the categories were fitted to (Trainer.type_init_summary), None without one
        self.type_init: dict | None = None
        #: how the training cells' neighbors were found (method, recall; Trainer.neighbor_search), None without
        self.neighbors: dict | None = None
        self._optimizer_state: dict | None = None
        self._rng_state: dict | None = None
        self._device_data: DeviceData | None = None
        self._inference: Inference | None = None
        #: cores kept free for other work when ``threads`` is unset (the app keeps one for its server)
        self.reserved_cores = 0
        #: CPU threads the last training used (``threads``, or the available cores; see cplmix_explorer.threads)
        self.threads_used: int | None = None
        #: the user's own names for types, by category id (``module.category_ids``); see :meth:`type_names`
        self.type_renames: dict[int, str] = {}
        self._automatic_names: tuple | None = None  # (inference, names, labels column used)
        self._stored_names: dict | None = None  # a run folder's type_names.json, used while it matches
        self._maps: dict[str, CellMap] = {}

    def training_threads(self) -> int:
        """The CPU threads training will use (``config.threads`` or the cores available, less reserved_cores)."""
        return resolve_threads(self.config.threads, self.reserved_cores)

    # -- training -------------------------------------------------------------------------------------------
    def make_trainer(
        self,
        *,
        device: str | torch.device | None = None,
        control: TrainingControl | None = None,
        run_dir: str | os.PathLike | None = None,
        checkpoint_extra: dict | None = None,
        distributed=None,
    ) -> Trainer:
        """A :class:`Trainer` for this model that continues from its current step and optimizer state."""
        if device is not None:
            self.config.update(device=str(device))
        self.threads_used = apply_threads(self.config.threads, self.reserved_cores)
        trainer = Trainer(
            self.module,
            self.prepared,
            self.config,
            events=self.events,
            control=control,
            checkpoint_path=Path(run_dir) / CHECKPOINT_NAME if run_dir is not None else None,
            checkpoint_extra=checkpoint_extra,
            distributed=distributed,
        )
        trainer.step = self.step
        trainer._step_counter.fill_(self.step)
        if self.state_kl_warmup_steps is not None:
            trainer.state_kl_warmup_steps = self.state_kl_warmup_steps
        trainer.lr_decay_window = self.lr_decay_window  # a resumed call keeps its window (Trainer.fit)
        trainer.adopt_type_init(self.type_init)
        if self._optimizer_state is not None:
            restore_optimizer(trainer.optimizer, self._optimizer_state)
        if self._rng_state:
            trainer.set_rng_state(self._rng_state)
        return trainer

    def train(
        self,
        steps: int | None = None,
        epochs: float | None = None,
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
        control: TrainingControl | None = None,
        run_dir: str | os.PathLike | None = None,
        until_step: int | None = None,
        distributed=None,
    ) -> TrainingResult:
        """Train for ``steps`` more steps (or ``epochs``; default: the config's schedule).

        ``until_step`` instead trains up to an absolute step (used to resume a run to its planned end).
        With ``run_dir`` checkpoints are written there periodically. Returns the per-step history.
        """
        trainer = self.make_trainer(device=device, control=control, run_dir=run_dir, distributed=distributed)
        if until_step is None:
            until_step = self.step + planned_steps(self.config, self.prepared.n_cells, steps, epochs)
        if self.state_kl_warmup_steps is None:  # the first training call's schedule sets the warm-up
            self.state_kl_warmup_steps = trainer.state_kl_warmup_steps = state_kl_warmup_steps(
                self.config, until_step - self.step)
        bar = ProgressBar(self.events) if progress and trainer.is_main else None
        try:
            result = trainer.fit(until_step)
        finally:
            if bar is not None:
                bar.close()
            self.step = trainer.step
            self.lr_decay_window = trainer.lr_decay_window
            self.augment_used = trainer.augment_name
            self.type_init = trainer.type_init_summary
            self.neighbors = trainer.neighbor_search or self.neighbors
            self._optimizer_state = trainer.optimizer.state_dict()
            self._rng_state = trainer.rng_state()
            self._invalidate()
        self.history = result
        return result

    def reset_optimizer(self) -> None:
        """Forget the Adam state (after the network's shape changed, e.g. by pruning)."""
        self._optimizer_state = None
        self._invalidate()

    def _invalidate(self) -> None:
        self._device_data = None
        self._inference = None
        self._maps = {}

    # -- inference ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def device_data(self) -> DeviceData:
        if self._device_data is None or self._device_data.device != self.device:
            self._device_data = DeviceData(self.prepared, self.device)
        return self._device_data

    def predict(self) -> Inference:
        """Types, confidence, state means and latent of every cell (cached until the model changes)."""
        if self._inference is None:
            self._inference = infer(self.module, self.device_data())
        return self._inference

    def consensus(self) -> Consensus | None:
        """Agreement of the arms over all cells (None for one arm)."""
        return consensus(self.predict().type_per_arm, self.module.n_types)

    def get_latent_representation(self) -> np.ndarray:
        """Arm 0's encoder bottleneck (N, D)."""
        return self.predict().latent[0]

    def get_state(self, arm: int = 0) -> np.ndarray:
        """State means (N, S) of one arm, given its assigned type."""
        return self.predict().state_mean[arm]

    def cell_map(self, method: str = UMAP, run_dir: str | os.PathLike | None = None, progress: bool = False) -> CellMap:
        """The 2-D map of every cell: by default UMAP of its types and states (the arms' mean type posterior
        next to arm 0's state), fitted on a sample for large data; ``"umap_latent"`` / ``"pca"``: UMAP / PCA of
        arm 0's latent. Computed once per model: kept in memory and, with ``run_dir``, in RUN_DIR/map.npy."""
        cached = self._maps.get(method)
        if cached is not None and run_dir is not None:
            keep_map(run_dir, cached, method)
        if cached is None:
            weights = {name: value.detach().cpu().numpy() for name, value in self.module.state_dict().items()}
            key = map_key(weights, self.prepared.obs_names)
            if BASIS.get(method) == TYPES_AND_STATES:
                features = lambda: types_and_states(self.module, self.device_data())  # noqa: E731
            else:
                features = lambda: self.predict().latent[0]  # noqa: E731
            cached = run_map(features, key, run_dir, method=method, seed=self.config.seed,
                             progress=progress)
            self._maps[method] = cached
        return cached

    def evaluate(self, labels: str | None = None) -> dict[str, Any]:
        """ACC, ARI, NMI, KL against ``adata.obs[labels]`` (averaged across arms), agreement and K."""
        labels = labels or self.config.labels
        inference = self.predict()
        agreement = consensus(inference.type_per_arm, self.module.n_types)
        result: dict[str, Any] = {
            "k": int(self.module.n_types),
            "k_used": int(len(np.unique(inference.consensus_type))),
            "consensus": agreement.mean if agreement is not None else None,
            "consensus_min": agreement.min if agreement is not None else None,
            "n_cells": int(self.prepared.n_cells),
            "step": int(self.step),
        }
        if labels is not None:
            if labels not in self.adata.obs.columns:
                raise CplmixError(f"unknown labels column '{labels}' (obs columns: {', '.join(map(str, self.adata.obs.columns))})")
            result["labels"] = labels
            result.update(evaluate_inference(inference, self.adata.obs[labels].to_numpy()))
        return result

    # -- type names and markers ----------------------------------------------------------------------------
    def type_names(self) -> list[str]:
        """The name of every type 0..K-1: the user's rename, else the automatic name (the label most of the
        type's cells carry when ``config.labels`` is set, else its top two marker genes: ``3 · Gad1/Pvalb``;
        see :mod:`cplmix_explorer.analysis.names`)."""
        automatic, _ = self._automatic_type_names()
        ids = self.module.category_ids.cpu().numpy().tolist()
        return [self.type_renames.get(int(c)) or automatic[t] for t, c in enumerate(ids)]

    def _automatic_type_names(self) -> tuple[list[str], str | None]:
        stored = self._stored_names
        if stored is not None and stored.get("automatic") is not None and (
            stored.get("step") == self.step and stored.get("n_cells") == self.prepared.n_cells
            and stored.get("category_ids") == self.module.category_ids.cpu().numpy().tolist()
            and stored.get("labels") == (self.config.labels if self.config.labels in self.adata.obs.columns else None)
        ):
            return list(stored["automatic"]), stored.get("labels")
        inference = self.predict()
        if self._automatic_names is None or self._automatic_names[0] is not inference:
            names, labels = automatic_names(self)
            self._automatic_names = (inference, names, labels)
        return list(self._automatic_names[1]), self._automatic_names[2]

    def rename_type(self, type: int | str, name: str, run_dir: str | os.PathLike | None = None) -> list[str]:  # noqa: A002
        """Name type ``type`` (an index or its current name) ``name``; an empty name goes back to the
        automatic one. With ``run_dir`` the names are saved there (type_names.json) and put into its
        result.h5ad. Returns the names of all types."""
        names = self.type_names()
        index = resolve_type_index(names, type)
        name = check_name(name)
        category = int(self.module.category_ids[index])
        check_unique(names, index, name or self._automatic_type_names()[0][index])
        if name:
            self.type_renames[category] = name
        else:
            self.type_renames.pop(category, None)
        if run_dir is not None:
            self.save_type_names(run_dir, update_result=True)
        return self.type_names()

    def save_type_names(self, run_dir: str | os.PathLike, update_result: bool = False) -> Path:
        """Write RUN_DIR/type_names.json (atomically); ``update_result`` also puts the names into the
        run's result.h5ad."""
        automatic, labels = self._automatic_type_names()
        names = self.type_names()
        payload = names_payload(self, names, automatic, labels)
        path = write_names_file(run_dir, payload)
        self._stored_names = payload
        if update_result:
            rename_result_file(Path(run_dir) / RESULT_FILE, names)
        return path

    def load_type_names(self, run_dir: str | os.PathLike) -> None:
        """Take the renames (and, while they still describe this model, the automatic names) saved in
        RUN_DIR/type_names.json; nothing happens when the run has none."""
        payload = read_names_file(run_dir)
        if payload is None:
            return
        ids = {int(c) for c in self.module.category_ids.cpu().numpy().tolist()}
        self.type_renames = {int(k): v for k, v in payload["renamed"].items() if int(k) in ids}
        self._stored_names = payload

    def markers(self, top: int = 5) -> pd.DataFrame:
        """The top ``top`` marker genes of every type (one-vs-rest Wilcoxon, as scanpy's
        ``rank_genes_groups``): type, name, rank, gene, score, logfoldchange, pval, pval_adj, frac_in,
        frac_out, mean_in, mean_out, n_cells."""
        from .analysis.markers import markers  # lazy: markers load matplotlib, which a model needs only here

        return markers(self, top)

    def dotplot(self, top: int = 3, **options):
        """A matplotlib Figure: the dot plot of every type's top ``top`` markers (fraction of the type's
        cells expressing x mean expression); ``options`` go to ``analysis.markers.dotplot_figure``."""
        from .analysis.markers import dotplot  # lazy: as markers

        return dotplot(self, top, **options)

    def info(self) -> dict[str, Any]:
        """What ``uns['cplmix']`` records: configuration, steps, categories, genes, augmentation."""
        return {
            "config": self.config.to_dict(),
            "step": int(self.step),
            "category_ids": self.module.category_ids.cpu().numpy().tolist(),
            "genes": list(self.prepared.genes),
            "preprocessing": {k: v for k, v in self.prepared.preprocessing.to_dict().items() if k != "genes"},
            "augment": self.augment_used,
            "type_init": self.type_init,
            **({"dropped_empty_cells": self.dropped_empty_cells} if self.dropped_empty_cells else {}),
            "neighbours": self.neighbors,
        }

    def write_results(self, adata: AnnData | None = None, metrics: dict | None = None) -> AnnData:
        """Write types, confidence, states, latent and ``uns['cplmix']`` into ``adata`` (default: the model's)."""
        adata = self.adata if adata is None else adata
        if adata.n_obs != self.prepared.n_cells:
            raise CplmixError(f"the AnnData has {adata.n_obs} cells but the model was set up on {self.prepared.n_cells}")
        info = self.info()
        if metrics is not None:
            info["metrics"] = metrics
        return write_results(adata, self.predict(), n_types=self.module.n_types, agreement=self.consensus(), info=info,
                             type_names=self.type_names())

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/checkpoint.safetensors`` (weights, configuration, genes, optimizer state) and,
        when types were renamed, ``directory/type_names.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        optimizer = None
        if self._optimizer_state is not None:
            optimizer = torch.optim.Adam(self.module.parameters())
            restore_optimizer(optimizer, self._optimizer_state)
        if self.type_renames:  # the user's names go with the model (e.g. the copy the app prunes)
            self.save_type_names(directory)
        return save_checkpoint(
            directory / CHECKPOINT_NAME,
            model=self.module,
            config=self.config.to_dict(),
            preprocessing=self.prepared.preprocessing.to_dict(),
            step=self.step,
            optimizer=optimizer,
            rng_state=self._rng_state or {"cpu": torch.get_rng_state()},
            extra={"augment": self.augment_used, **({"type_init": self.type_init} if self.type_init else {}),
                   **({"neighbours": self.neighbors} if self.neighbors else {}),
                   **({"state_kl_warmup_steps": self.state_kl_warmup_steps}
                      if self.state_kl_warmup_steps is not None else {}),
                   **({"lr_decay_window": list(self.lr_decay_window)} if self.lr_decay_window else {})},
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, adata: AnnData | str | os.PathLike, device: str | None = None,
        prepared: PreparedData | None = None,
    ) -> CplMixVAE:
        """The model of ``checkpoint`` on ``adata``; ``prepared``: ``adata`` already prepared with the
        checkpoint's genes and transform (it is then used as it is instead of being prepared again)."""
        config = CplMixConfig.from_dict(checkpoint.config)
        if device is not None:
            config.update(device=device)
        model = cls(adata, config=config, _preprocessing=Preprocessing.from_dict(checkpoint.preprocessing),
                    _prepared=prepared)
        n_types = len(checkpoint.model_state["category_ids"])
        if n_types != model.module.n_types:  # a pruned model: rebuild at its size
            model.config.update(n_types=n_types)
            model.module = build_module(model.config, model.prepared.n_genes, model.prepared.library_size)
        try:
            model.module.load_state_dict(checkpoint.model_state)
        except RuntimeError as error:
            raise CplmixError(f"checkpoint '{checkpoint.path}' does not match its configuration: {str(error).splitlines()[0]}") from None
        model.module.to(resolve_device(config.device))
        model.step = checkpoint.step
        model.augment_used = checkpoint.extra.get("augment")
        model.type_init = checkpoint.extra.get("type_init")
        model.neighbors = checkpoint.extra.get("neighbours")
        model.state_kl_warmup_steps = checkpoint.extra.get("state_kl_warmup_steps")
        window = checkpoint.extra.get("lr_decay_window")
        model.lr_decay_window = tuple(int(step) for step in window) if isinstance(window, list) and len(window) == 2 else None
        model._optimizer_state = checkpoint.optimizer_state
        model._rng_state = checkpoint.rng_state or None
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, adata: AnnData | str | os.PathLike, device: str | None = None,
             prepared: PreparedData | None = None) -> CplMixVAE:
        """Load a model saved with :meth:`save` (a run folder or a checkpoint file) onto ``adata``.

        Data with other genes than the model's raise :class:`CplmixError`. ``prepared``: ``adata`` as an
        earlier model of the same genes prepared it (reused instead of preparing it again).
        """
        path = Path(path)
        checkpoint = read_checkpoint(path) if path.is_file() else load_run_checkpoint(path)
        model = cls.from_checkpoint(checkpoint, adata, device=device, prepared=prepared)
        if path.is_dir():
            model.load_type_names(path)
        return model


def _check_prepared_for(prepared: PreparedData, adata: AnnData, preprocessing: Preprocessing | None) -> PreparedData:
    """``prepared`` when it was made from ``adata``'s cells (and, given ``preprocessing``, with its genes and
    transform); a mismatch would silently train or show a model on other cells or genes."""
    if prepared.n_cells != adata.n_obs or not prepared.obs_names.equals(adata.obs_names):
        raise CplmixError(f"the prepared data holds {prepared.n_cells} cells, not the {adata.n_obs} cells of this AnnData")
    if preprocessing is not None and (prepared.genes != list(preprocessing.genes)
                                      or prepared.preprocessing.transform != preprocessing.transform):
        raise CplmixError("the prepared data has other genes or another transform than the model's")
    return prepared


def prepare_for_model(adata: AnnData, config: CplMixConfig) -> PreparedData:
    """``adata`` prepared as a new model with ``config`` prepares it (empty cells dropped per the config):
    made once, it can be handed to a training process and to the model loaded back after it."""
    if config.drop_empty_cells:
        adata, _ = drop_empty_cells(adata, config.layer)
    return prepare(adata, config)

