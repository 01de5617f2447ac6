"""The training engine: owns the device, the data on it, mini-batches, the optimizer, checkpoints, and
publishes metric events.

Per step nothing crosses to the host: batch indices come from a per-epoch permutation drawn on the device,
the loss terms of every step are written into a device ring buffer, and a device-side step counter records
the first step whose loss (or input) is not finite. The host reads that buffer every ``log_every`` steps (one
synchronisation) and publishes the per-step values. On CUDA the whole step (gather, augmentation, forward,
backward, Adam) is captured once in a CUDA graph and replayed ("graph" fast path); elsewhere the same step
runs eagerly. Both paths execute the same step function.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model.consensus import consensus
from ..model.inference import infer
from ..config import TYPE_INIT_CHECK_CELLS_PER_TYPE, TYPE_INIT_CHECK_STEPS, TYPE_INIT_WEIGHT, CplMixConfig, neighbor_components, type_bottleneck_width
from ..data.preprocess import PreparedData
from ..device import resolve_device
from ..errors import CplmixError, NonFiniteLossError
from ..model.augmenters import augmenter_for
from ..model.losses import CapacitySchedule, cplmix_loss, metric_names, warmed_up_weight
from ..model.neighbors import find_neighbors, rescaled_log_counts, standardized
from ..model.network import FIXED_GENE_VARIANCE, GAUSSIAN, CoupledMixtureVAE
from ..model.type_init import (LeidenGraph, align_to, most_reproduced, start_partition, targets_from_any_run,
                               targets_where_runs_agree)
from .checkpoint import Checkpoint, restore_optimizer, save_checkpoint
from .device_data import DeviceData
from .distributed import DistributedContext
from .events import (
    CheckpointSaved,
    Evaluation,
    EventBus,
    StepMetrics,
    TrainingControl,
    TrainingFinished,
    TrainingRestarted,
    TrainingStarted,
)

logger = logging.getLogger(__name__)

#: Cells an evaluation uses at most: for the arms' agreement, and held-out ones for the validation loss.
MAX_EVALUATION_CELLS = 20000


def build_module(config: CplMixConfig, n_genes: int, library_size: np.ndarray | None = None) -> CoupledMixtureVAE:
    """A freshly initialised network for ``config``; the initial weights depend only on ``config.seed``.

    ``library_size``: the cells' library sizes when the data are raw counts (None otherwise); with
    ``depth_covariate`` the decoder then reads each cell's standardised log library size, centred and scaled on
    these cells (a saved model keeps its own centre and scale)."""
    if config.gene_variance != FIXED_GENE_VARIANCE and config.likelihood != GAUSSIAN:
        raise CplmixError(f"--gene-variance {config.gene_variance} applies to the Gaussian likelihood only, not to --likelihood {config.likelihood}")
    if config.marginal_entropy_weight and config.objective == "jointvae":  # JointVAE has no such term
        raise CplmixError(f"--marginal-entropy-weight applies to the cpl-mixVAE objective only, not to --objective {config.objective}")
    torch.manual_seed(config.seed)
    module = CoupledMixtureVAE(
        n_genes=n_genes,
        n_types=config.n_types,
        state_dim=config.state_dim,
        n_arms=config.n_arms,
        hidden_dim=config.hidden_dim,
        n_hidden_layers=config.n_hidden_layers,
        bottleneck_dim=config.bottleneck_dim,
        type_bottleneck_dim=type_bottleneck_width(config),
        input_dropout=config.input_dropout,
        state_dropout=config.state_dropout,
        likelihood=config.likelihood,
        tau=config.tau,
        state_depends_on_type=config.state_depends_on_type,
        share_arm_parameters=config.share_arm_parameters,
        straight_through=config.straight_through,
        state_encoder=config.state_encoder,
        gene_variance=config.gene_variance,
        state_bottleneck=config.state_bottleneck,
        depth_covariate=config.depth_covariate and library_size is not None,
    )
    if module.depth_covariate:
        module.set_depth_reference(library_size)
    return module


def evaluation_sample(rows: np.ndarray, seed: int) -> np.ndarray:
    """``rows`` itself, or a fixed seeded random MAX_EVALUATION_CELLS of them (sorted) when there are more: the
    cells every evaluation of a run uses, the same ones each time so that evaluations compare."""
    if len(rows) <= MAX_EVALUATION_CELLS:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, MAX_EVALUATION_CELLS, replace=False))


def validation_size(n_cells: int, validation_fraction: float) -> int:
    return min(int(round(n_cells * validation_fraction)), max(n_cells - 2, 0))


def split_cells(n_cells: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train / validation row indices (sorted), deterministic per seed."""
    order = np.random.default_rng(seed).permutation(n_cells)
    n_validation = validation_size(n_cells, validation_fraction)
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def planned_steps(config: CplMixConfig, n_cells: int, steps: int | None = None, epochs: float | None = None) -> int:
    """Training steps of a schedule: ``epochs`` over the training cells (full batches) when given, else
    ``steps``; both default to the config's."""
    if steps is None and epochs is None:
        steps, epochs = config.steps, config.epochs
    if epochs is not None:
        n_train = n_cells - validation_size(n_cells, config.validation_fraction)
        steps_per_epoch = max(n_train // min(config.batch_size, n_train), 1)
        return max(1, math.ceil(epochs * steps_per_epoch))
    return int(steps)


def choose_fast_path(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "graph" if device.type == "cuda" else "eager"
    if requested == "graph" and device.type != "cuda":
        raise CplmixError("the CUDA-graph fast path needs a CUDA device")
    return requested


@dataclass
class TrainingResult:
    step: int
    status: str  # completed | stopped
    elapsed_seconds: float
    steps_per_second: float
    history_steps: np.ndarray
    history_values: np.ndarray
    metric_names: list[str]
    evaluations: list[Evaluation] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)  # automatic restarts after non-finite losses


def lr_decay_window(config: CplMixConfig, first_step: int, last_step: int) -> tuple[int, int] | None:
    """The steps [start, end) over which the learning rate falls linearly to 0 in a training call from
    ``first_step`` to ``last_step``: its final share ``lr_decay`` (None: a constant rate)."""
    if config.lr_decay <= 0 or last_step <= first_step:
        return None
    return last_step - round(config.lr_decay * (last_step - first_step)), last_step


def lr_factor(step: int, window: tuple[int, int] | None) -> float:
    """The learning rate of ``step`` as a share of the full rate: 1 before the window, then falling linearly
    to 0 at its end."""
    if window is None or step < window[0]:
        return 1.0
    start, end = window
    return max(end - step, 0) / (end - start)


def state_kl_warmup_steps(config: CplMixConfig, planned: int) -> int:
    """The steps over which the state KL weight rises from 0 to beta: the share ``state_kl_warmup`` of the
    ``planned`` steps of a run (0: no warm-up)."""
    return round(config.state_kl_warmup * max(planned, 0))


class Trainer:
    """Trains a :class:`CoupledMixtureVAE` on a :class:`PreparedData` with the options of a config."""

    def __init__(
        self,
        module: CoupledMixtureVAE,
        prepared: PreparedData,
        config: CplMixConfig,
        *,
        device: torch.device | str | None = None,
        events: EventBus | None = None,
        control: TrainingControl | None = None,
        checkpoint_path: str | Path | None = None,
        checkpoint_extra: dict | None = None,
        distributed: DistributedContext | None = None,
    ):
        self.config = config
        self.distributed = distributed
        if distributed is not None:
            device = distributed.device
            if not distributed.is_main:
                events = EventBus()  # only rank 0 reports
        self.device = resolve_device(config.device if device is None else device)
        self.prepared = prepared
        self.module = module.to(self.device)
        self.events = events or EventBus()
        self.control = control or TrainingControl()
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_extra = checkpoint_extra or {}
        self.augmenter, self.augment_name = augmenter_for(config, prepared, module.likelihood)
        self.augmenter = self.augmenter.to(self.device)
        keep_counts = self.augmenter.needs_counts or module.likelihood != GAUSSIAN
        self.data = DeviceData(prepared, self.device, keep_counts=keep_counts)
        train_rows, validation_rows = split_cells(prepared.n_cells, config.validation_fraction, config.seed)
        if len(train_rows) < 2:
            raise CplmixError(f"too few cells to train ({prepared.n_cells})")
        self.train_rows = torch.as_tensor(train_rows, device=self.device)
        #: how the training cells' neighbors were found (NeighborSearch.summary()), None until they are
        self.neighbor_search: dict | None = None
        if self.augmenter.chooses_rows:  # neighbor copies: find each training cell's neighbors (rows read in chunks)
            self.augmenter.fit(self._graph_input(self.train_rows), self.train_rows, self.data.n_cells, seed=config.seed)
            self.neighbor_search = self.augmenter.search.summary()
        self.validation_rows = validation_rows
        self.batch_size = min(config.batch_size, len(train_rows))  # the global batch
        self.steps_per_epoch = max(len(train_rows) // self.batch_size, 1)
        self.local_batch_size = self.batch_size
        self.forward_module: torch.nn.Module = self.module
        self._reducer = None
        if distributed is not None:
            if self.batch_size % distributed.world_size:
                raise CplmixError(
                    f"the batch size ({self.batch_size}) must be divisible by the number of processes "
                    f"({distributed.world_size})"
                )
            self.local_batch_size = self.batch_size // distributed.world_size
            self._reducer = distributed.reduce_sum
            self.module.set_batch_reducer(distributed.reduce_sum)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_module = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)
        self.fast_path = choose_fast_path(config.fast_path, self.device)
        if distributed is not None and self.fast_path != "eager":
            self.fast_path = "eager"  # collectives inside the step: no CUDA-graph capture
        self.optimizer = self._make_optimizer()
        self._capacity = CapacitySchedule.from_config(config)  # JointVAE baseline only
        #: steps over which the state KL weight rises from 0 to beta: a share of the run the options plan
        #: (CplMixVAE sets it from its first training call's schedule)
        self.state_kl_warmup_steps = state_kl_warmup_steps(config, self.total_steps_for())
        #: steps [start, end) over which the learning rate falls to 0 (:func:`lr_decay_window`); set by each
        #: training call (CplMixVAE keeps a resumed run's), None: a constant rate
        self.lr_decay_window: tuple[int, int] | None = None
        self.metric_names = metric_names(module.n_arms)
        self.log_every = config.log_every
        n_metrics = len(self.metric_names)
        self._metric_ring = torch.zeros(self.log_every, n_metrics, device=self.device)
        self._step_counter = torch.zeros((), dtype=torch.long, device=self.device)
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_terms = torch.zeros(n_metrics, dtype=torch.bool, device=self.device)
        self._batch_index = torch.zeros(self.local_batch_size, dtype=torch.long, device=self.device)
        self._epoch_generator = torch.Generator(device=self.device)
        self._permutation: torch.Tensor | None = None
        self._permutation_epoch = -1
        self._graph: torch.cuda.CUDAGraph | None = None
        self._compiled_loss = None
        self.step = 0
        #: steps [0, type_init_end) fit the type heads to the initial partition (0: no initial partition); while
        #: type_init_open the end moves on until the heads fit the partition (config.type_init_fit)
        self.type_init_end = config.type_init_steps if config.type_init == "leiden" else 0
        self.type_init_open = bool(self.type_init_end) and config.type_init_fit > 0
        self.start_fit_measured: list[float] | None = None  # each arm's start_fit() at the last check
        self._type_init_check_rows: np.ndarray | None = None  # data rows the warm-up's fit is checked on
        self.type_targets: torch.Tensor | None = None  # (A, cells) each arm's initial category of each data row, -1 for none
        #: (A, R-1, cells) with start_any_run: the other Leiden runs' categories of each data row that the runs
        #: dispute, which the prior counts as that arm's start as well (-1 for none); None without
        self.type_alternatives: torch.Tensor | None = None
        self.start_runs: np.ndarray | None = None  # (runs, training rows) the Leiden runs' categories, before any is left out
        #: weight of the cross-entropy toward the initial partition after the warm-up (0: the objective alone)
        self.type_prior_weight = config.type_prior_weight if self.type_init_end else 0.0
        self.type_init_summary: dict | None = None  # what the run records about the initial partition
        self.evaluate_at_end = True  # benchmarks turn this off to time training alone
        self.evaluations: list[Evaluation] = []
        self._history_steps: list[np.ndarray] = []
        self._history_values: list[np.ndarray] = []
        self._evaluation_rows = evaluation_sample(np.arange(prepared.n_cells), config.seed)
        #: the held-out cells the validation loss is computed on (so that an evaluation's cost does not grow with N)
        self._validation_loss_rows = evaluation_sample(validation_rows, config.seed)
        torch.manual_seed(config.seed)

    # -- set-up ---------------------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.module.parameters() if p.requires_grad]
        if self.device.type == "cuda":
            optimizer = torch.optim.Adam(params, lr=self.config.lr, fused=True, capturable=self.fast_path == "graph")
        else:
            optimizer = torch.optim.Adam(params, lr=self.config.lr, fused=True)  # fused is ~10x faster on CPU too
        for group in optimizer.param_groups:  # the full rate the decay starts from (as torch's LR schedulers)
            group["initial_lr"] = self.config.lr
        return optimizer

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: weights, Adam state, step count and random streams."""
        self.module.load_state_dict({k: v.to(self.device) for k, v in checkpoint.model_state.items()})
        if checkpoint.optimizer_state is not None:
            restore_optimizer(self.optimizer, checkpoint.optimizer_state)
        self.step = checkpoint.step
        self._step_counter.fill_(checkpoint.step)
        self.set_rng_state(checkpoint.rng_state)

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        if "cpu" in state:
            torch.set_rng_state(state["cpu"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def rng_state(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def total_steps_for(self, steps: int | None = None, epochs: float | None = None) -> int:
        """Steps for a schedule (see :func:`planned_steps`)."""
        return planned_steps(self.config, self.data.n_cells, steps, epochs)

    # -- one step -------------------------------------------------------------------------------------------
    def _batch_for_step(self, step: int) -> torch.Tensor:
        """Indices of the cells of (0-based) step ``step``: a slice of that epoch's device permutation."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._permutation_epoch:
            self._epoch_generator.manual_seed(self.config.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.train_rows), generator=self._epoch_generator, device=self.device)
            self._permutation = self.train_rows[order]
            self._permutation_epoch = epoch
        start = position * self.batch_size
        if self.distributed is not None:  # this process's shard of the global batch
            start += self.distributed.rank * self.local_batch_size
        return self._permutation[start : start + self.local_batch_size]

    def _rows_input(self, rows: torch.Tensor):
        """A function giving the model input (r, G) of positions ``index`` into the data rows ``rows``."""
        return lambda index: self.data.model_input(rows[index])

    def _graph_input(self, rows: torch.Tensor):
        """A function giving what the neighbor graph of data rows ``rows`` is found in, for positions
        ``index`` into them: the model input, for count data with the counts scaled to ``neighbor_target_sum``
        per cell (:meth:`graph_target_sum`) before the log, and with each gene standardised for expression data
        when ``neighbor_scale_genes`` is on (images keep their pixels)."""
        rows_of = self._rows_input(rows)
        if self.data.is_counts_transform:
            rows_of = rescaled_log_counts(rows_of, self.graph_target_sum(rows) / self.data.target_sum)
        if self.config.neighbor_scale_genes and self.prepared.preprocessing.image_shape is None:
            return standardized(rows_of, len(rows), device=self.device)
        return rows_of

    def graph_target_sum(self, rows: torch.Tensor) -> float:
        """Counts per cell the neighbor graph of count data scales every cell to: ``neighbor_target_sum``, or the
        median total counts of the cells ``rows``."""
        if self.config.neighbor_target_sum is not None:
            return float(self.config.neighbor_target_sum)
        return float(np.median(self.data.library_of(rows).cpu().numpy()))

    def _arm_inputs(
        self, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Each arm's augmented copy of the batch: model input (A, B, G), reconstruction target, NB library,
        the decoder's depth covariate (A, B, 1; None without it) and the data rows (A, B) each arm's copies
        come from."""
        n_arms = self.module.n_arms
        if self.augmenter.chooses_rows:  # each arm sees other stored cells, with their own library sizes
            source = self.augmenter.source_rows(index, n_arms, step=self._step_counter)  # (A, B)
            rows = source.reshape(-1)
            copies = self.data.gather(rows).view(n_arms, len(index), -1)
            copy_library = self.data.library_of(rows)
            copy_library = None if copy_library is None else copy_library.view(n_arms, len(index))
        else:
            source = index.unsqueeze(0).expand(n_arms, -1)
            values = self.data.gather(index)
            copies = self.augmenter(values, n_arms)
            copy_library = None
            if self.data.holds_counts:  # a thinned copy keeps its cell's depth relative to its own counts
                library = self.data.library_of(index)
                copy_library = library * copies.sum(dim=-1) / values.sum(dim=-1).clamp_min(1e-6)
        if self.data.holds_counts:
            x = self.data.transform(copies, copy_library)
            nb_library = copies.sum(dim=-1, keepdim=True)
        else:
            x, nb_library = copies, None
        target = x if self.module.likelihood == GAUSSIAN else copies
        depth = None
        if self.module.depth_covariate and copy_library is not None:
            depth = self.module.depth(copy_library.unsqueeze(-1))
        return x, target, nb_library, depth, source

    def _batch_objective(self, index: torch.Tensor):
        """The arms' outputs on their copies of batch ``index``, the objective's terms, and the data rows (A, B)
        the copies come from."""
        x, target, nb_library, depth, rows = self._arm_inputs(index)
        outputs = self.forward_module(x, self.config.gumbel_temperature, depth=depth)
        terms = self._objective(outputs, target, nb_library, step=self._step_counter, reducer=self._reducer)
        return outputs, terms, rows

    def _loss(self, index: torch.Tensor):
        """The objective, plus ``type_prior_weight`` x the cross-entropy toward the initial partition when the
        partition stays a prior after the warm-up; the logged metrics are the objective's alone."""
        outputs, terms, rows = self._batch_objective(index)
        if self.type_targets is None or not self.type_prior_weight:
            return terms.total, terms.metric_vector()
        return terms.total + self.type_prior_weight * self._start_cross_entropy(outputs, rows), terms.metric_vector()

    def _type_init_loss(self, index: torch.Tensor):
        """The objective plus TYPE_INIT_WEIGHT x the cross-entropy toward the initial partition (the warm-up)."""
        outputs, terms, rows = self._batch_objective(index)
        return terms.total + TYPE_INIT_WEIGHT * self._start_cross_entropy(outputs, rows), terms.metric_vector()

    def _start_cross_entropy(self, outputs, rows: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every arm's q(c|x) against the initial category of the cell it sees (rows
        (A, B); cells without one, outside the partition, are left out); with start_any_run, against the set of
        the runs' categories of a disputed cell (minus the log of their summed probability)."""
        categories = self.type_targets.gather(1, rows)  # (A, B): each arm's category of the cell it sees
        known = categories >= 0
        log_q = outputs.log_q.gather(-1, categories.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        if self.type_alternatives is not None:  # (A, R-1, B): gathered at once, no per-slot view of every cell
            slots = self.type_alternatives.shape[1]
            for other in self.type_alternatives.gather(2, rows.unsqueeze(1).expand(-1, slots, -1)).unbind(1):
                other_log_q = outputs.log_q.gather(-1, other.clamp_min(0).unsqueeze(-1)).squeeze(-1)
                log_q = torch.where(other >= 0, torch.logaddexp(log_q, other_log_q), log_q)
        return -(log_q * known).sum() / known.sum().clamp_min(1)

    @torch.no_grad()
    def start_graph(self) -> LeidenGraph:
        """The training cells' 15-nearest-neighbor graph the start partition is found in: the walks' search when
        the run has walks (the copies and the start then come from one graph), else one found here in the top
        ``neighbor_components`` PCs; weighted as ``leiden_weights`` asks. Records the search in
        ``neighbor_search`` when it is found here."""
        rows = self.train_rows
        if self.augmenter.chooses_rows:  # the walks' search: every training row's neighbors, as positions in rows
            search = self.augmenter.search
        else:
            search = find_neighbors(self._graph_input(rows), len(rows), neighbor_components(self.config),
                                    seed=self.config.seed, device=self.device)
            self.neighbor_search = search.summary()
        weighted = self.config.leiden_weights == "umap" and search.distances is not None
        return LeidenGraph.from_neighbors(search.indices.cpu().numpy(),
                                          search.distances.cpu().numpy() if weighted else None)

    @torch.no_grad()
    def prepare_type_init(self) -> None:
        """Compute each arm's initial partition (:mod:`cplmix_explorer.model.type_init`) of the training cells:
        K groups of their 15-nearest-neighbor graph (Leiden at ``start_overcluster`` x K, joined down to K;
        the walks' graph when the run has walks, else
        found here on every training cell), one Leiden run per arm (one for all when the arms share their
        weights): the ``start_candidates`` runs, each with its own seed, that the others reproduce best, aligned to
        the first arm's categories. Deterministic for the config's seed."""
        graph = self.start_graph()  # built once for every arm's run
        n_types, n_arms = self.module.n_types, self.module.n_arms
        runs = n_arms if self.config.start_per_arm and not self.config.share_arm_parameters else 1
        overcluster = self.config.start_overcluster
        candidates = max(runs, self.config.start_candidates)
        partitions = [start_partition(graph, n_types, seed=self.config.seed * 1000, overcluster=overcluster)]
        for run in range(1, candidates):  # searched from the first run's resolution: usually found at the first try
            partitions.append(start_partition(graph, n_types, seed=self.config.seed * 1000 + run,
                                              first_resolution=partitions[0].resolution, overcluster=overcluster))
        del graph
        order, reproduced = most_reproduced([p.labels for p in partitions], n_types)
        partitions = [partitions[i] for i in order[:runs]]  # the most reproduced runs, one per arm
        labels = [partitions[0].labels] + [align_to(partitions[0].labels, p.labels, n_types) for p in partitions[1:]]
        rows = self.train_rows
        self.start_runs = np.stack(labels)  # (runs, training rows): each Leiden run's categories, aligned
        agreed = np.all([arm_labels == labels[0] for arm_labels in labels[1:]], axis=0) if runs > 1 else None
        unreproduced = None
        if self.config.start_agreed_only and agreed is not None:  # a cell the runs place differently has no start
            held, unreproduced = targets_where_runs_agree(self.start_runs, n_types)
            labels = list(held)
            if self.config.start_any_run:  # a disputed cell is held to any run's category
                own, others = targets_from_any_run(self.start_runs, held)
                labels = list(own)
                self.type_alternatives = self._per_arm_over_cells(others)
        self.type_targets = targets = self._per_arm_over_cells(np.stack(labels))
        self._type_init_check_rows = self._warm_up_check_rows(rows.cpu().numpy(), targets[0, rows].cpu().numpy())
        self.type_init_summary = {**partitions[0].summary(), "runs": runs, "neighbours": self.neighbor_search,
                                  **({"candidates": candidates, "reproduced": [round(float(reproduced[i]), 4) for i in order[:runs]]}
                                     if candidates > runs else {}),
                                  **({"runs_agree": round(float(agreed.mean()), 4)} if agreed is not None else {}),
                                  **({"held_from_first_run": unreproduced} if unreproduced is not None else {})}
        self._record_warm_up()

    def _per_arm_over_cells(self, per_run: np.ndarray) -> torch.Tensor:
        """Each arm's values from its run (arm a takes run a mod R): ``per_run`` (R, ..., training rows) becomes
        (A, ..., cells) on the device, the values at the training rows and -1 (no category) at every other cell."""
        per_run = np.asarray(per_run)
        arms = np.arange(self.module.n_arms) % len(per_run)
        spread = torch.full((len(arms), *per_run.shape[1:-1], self.data.n_cells), -1, dtype=torch.long,
                            device=self.device)
        spread[..., self.train_rows] = torch.as_tensor(per_run[arms], dtype=torch.long, device=self.device)
        return spread

    def _warm_up_check_rows(self, rows: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """The training rows the warm-up's fit is checked on: up to TYPE_INIT_CHECK_CELLS_PER_TYPE of every start
        category (the first arm's), so that the smallest types count as much as the largest."""
        generator = np.random.default_rng(self.config.seed)
        chosen = []
        for category in np.unique(categories[categories >= 0]):
            members = rows[categories == category]
            if len(members) > TYPE_INIT_CHECK_CELLS_PER_TYPE:
                members = generator.choice(members, TYPE_INIT_CHECK_CELLS_PER_TYPE, replace=False)
            chosen.append(members)
        return np.sort(np.concatenate(chosen)) if chosen else rows[:0]

    def _record_warm_up(self) -> None:
        """Write the warm-up's end (so far), whether it has ended, and the arms' fit to their start into the
        summary the run records (a resumed run reads them back, :meth:`adopt_type_init`)."""
        if self.type_init_summary is not None:
            self.type_init_summary.update(steps=int(self.type_init_end), warm_up_ended=not self.type_init_open,
                                          **({"start_fit": self.start_fit_measured} if self.start_fit_measured else {}))

    def adopt_type_init(self, summary: dict | None) -> None:
        """Continue the warm-up recorded in ``summary`` (a run's type_init record): its end, and whether that
        end may still move (records without the flag come from a fixed-length warm-up)."""
        self.type_init_summary = summary
        if summary and "steps" in summary and self.type_init_end:
            self.type_init_end = int(summary["steps"])
            self.type_init_open = self.type_init_open and not summary.get("warm_up_ended", True)
            self.start_fit_measured = summary.get("start_fit")

    def start_fit(self) -> list[float]:
        """Per arm, how well its type head has learnt its start partition: the mean over start categories of the
        fraction of their (sampled) cells typed as that start category by :func:`infer` (eval mode, the cell itself
        as input): a balanced recall, so a small type left unlearnt counts as much as a large one."""
        rows = self._type_init_check_rows
        typed = infer(self.module, self.data, rows=rows).type_per_arm  # (A, r)
        targets = self.type_targets[:, torch.as_tensor(rows, device=self.device)].cpu().numpy()  # (A, r), all >= 0
        fits = []
        for arm_typed, arm_targets in zip(typed, targets):
            sizes = np.bincount(arm_targets)
            hits = np.bincount(arm_targets, weights=arm_typed == arm_targets, minlength=len(sizes))
            present = sizes > 0
            fits.append(float((hits[present] / sizes[present]).mean()) if present.any() else 0.0)
        return fits

    def _check_warm_up(self, total_steps: int) -> None:
        """At the warm-up's current end: end it when every arm fits its start (``type_init_fit``) or half the
        run's steps have passed, else move the end on by TYPE_INIT_CHECK_STEPS."""
        last = max(self.config.type_init_steps, total_steps // 2)
        fit = self.start_fit()
        if self.distributed is not None:  # every process decides as the first one
            fit = self.distributed.broadcast_object(fit)
        self.start_fit_measured = [round(f, 4) for f in fit]
        if min(fit) >= self.config.type_init_fit or self.step >= last:
            self.type_init_open = False
        else:
            self.type_init_end = min(self.step + TYPE_INIT_CHECK_STEPS, last)
        self._record_warm_up()

    def _objective(self, outputs, target: torch.Tensor, nb_library: torch.Tensor | None, step, reducer=None):
        """The configured objective (paper Eq. 7, or JointVAE) on one batch; the one call training and validation share.

        ``target`` (A, B, G), ``nb_library`` (A, B, 1) counts per copy for NB (else None), ``step`` the training
        step (int or 0-d tensor, for the JointVAE capacities), ``reducer`` the cross-process batch statistics.
        """
        return cplmix_loss(
            outputs,
            target,
            likelihood=self.module.likelihood,
            lam=self.config.lam,
            beta=warmed_up_weight(self.config.beta, step, self.state_kl_warmup_steps),
            entropy_weight=self.config.entropy_weight,
            marginal_entropy_weight=self.config.marginal_entropy_weight,
            coupling_floor=self.config.coupling_floor,
            coupling_spread=self.config.coupling_spread,
            coupled=self.config.coupled,
            library=nb_library,
            log_theta=getattr(self.module, "log_theta", None),
            gene_variance=self.module.gene_variance,
            reducer=reducer,
            capacity=self._capacity,
            step=step,
        )

    def _step_body(self) -> None:
        """One training step on ``self._batch_index``; records metrics on the device (no host sync)."""
        if self.step < self.type_init_end:  # eager: a CUDA graph is captured only after these steps
            loss_fn = self._type_init_loss
        else:
            loss_fn = self._compiled_loss or self._loss
        total, metrics = loss_fn(self._batch_index)
        total.backward()
        self.optimizer.step()
        slot = torch.remainder(self._step_counter, self.log_every).view(1)
        self._metric_ring.index_copy_(0, slot, metrics.view(1, -1))
        bad = ~torch.isfinite(metrics)
        newly_bad = (self._first_bad_step < 0) & bad.any()
        self._step_counter.add_(1)
        self._first_bad_step.copy_(torch.where(newly_bad, self._step_counter, self._first_bad_step))
        self._bad_terms.copy_(torch.where(newly_bad, bad, self._bad_terms))

    def _set_learning_rate(self) -> None:
        """The learning rate of this step: each group's full rate (``initial_lr``, lowered by restarts after
        non-finite losses) times :func:`lr_factor`. A captured CUDA graph reads it from a tensor."""
        factor = lr_factor(self.step, self.lr_decay_window)
        for group in self.optimizer.param_groups:
            rate = group["initial_lr"] * factor
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate

    def _run_step(self) -> None:
        if self.lr_decay_window is not None:
            self._set_learning_rate()
        self._batch_index.copy_(self._batch_for_step(self.step))
        if self._graph is not None:
            self._graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._step_body()
        self.step += 1

    def _capture_graph(self, warmup_steps: int, last_step: int) -> None:
        """Capture the step in a CUDA graph after a few eager warm-up steps (which are real steps)."""
        if self.lr_decay_window is not None:  # the graph reads the rate from a tensor the schedule fills in
            for group in self.optimizer.param_groups:
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(min(warmup_steps, last_step - self.step)):
                self._run_step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self.step >= last_step:
            return
        try:
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self._step_body()
            self._graph = graph
        except Exception as error:  # e.g. an op without graph support: fall back, keep training
            warnings.warn(f"CUDA graph capture failed ({error}); training eagerly", stacklevel=2)
            torch.cuda.synchronize(self.device)
            self.fast_path = "eager"
            self._graph = None

    # -- host reads -----------------------------------------------------------------------------------------
    def _read_metrics(self, last_read_step: int, started: float, last_time: float) -> StepMetrics | None:
        """Copy the ring buffer to the host (one sync); raise on a non-finite step."""
        n_new = self.step - last_read_step
        if n_new <= 0:
            return None
        ring, first_bad_step = self._metric_ring, self._first_bad_step
        if self.distributed is not None:  # report the mean over processes; stop all if any failed
            ring = self.distributed.mean(ring)
            none = torch.full_like(first_bad_step, 2**62)
            first_bad_step = self.distributed.minimum(torch.where(first_bad_step < 0, none, first_bad_step))
            first_bad_step = torch.where(first_bad_step == 2**62, -torch.ones_like(first_bad_step), first_bad_step)
        ring = ring.cpu().numpy().astype(np.float64)
        first_bad = int(first_bad_step.item())
        if first_bad >= 0:
            bad = self._bad_terms.cpu().numpy()
            names = [n for n, b in zip(self.metric_names, bad) if b]
            names = [n for n in names if n != "loss"] or names  # the total fails with its terms: name those
            index = self._batch_for_step(first_bad - 1)
            if not bool(torch.isfinite(self.data.gather(index)).all() & torch.isfinite(self.data.model_input(index)).all()):
                names.insert(0, "input batch")
            raise NonFiniteLossError(first_bad, names)
        steps = np.arange(last_read_step + 1, self.step + 1)
        values = ring[(steps - 1) % self.log_every]
        now = time.perf_counter()
        rate = n_new / max(now - last_time, 1e-9)
        self._history_steps.append(steps)
        self._history_values.append(values)
        return StepMetrics(
            steps=steps,
            values=values,
            names=self.metric_names,
            total_steps=self._total_steps,
            steps_per_second=rate,
            cells_per_second=rate * self.batch_size,
            elapsed_seconds=now - started,
        )

    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Arm agreement on (up to MAX_EVALUATION_CELLS) cells and the validation loss on (up to as many)
        held-out cells, in eval mode."""
        self.module.eval()
        try:
            inference = infer(self.module, self.data, rows=self._evaluation_rows)
            agreement = consensus(inference.type_per_arm, self.module.n_types)
            validation_loss = None
            if len(self._validation_loss_rows):
                losses, weights = [], []
                for start in range(0, len(self._validation_loss_rows), 4096):
                    rows = self._validation_loss_rows[start : start + 4096]
                    index = torch.as_tensor(rows, device=self.device)
                    x = self.data.model_input(index).unsqueeze(0).expand(self.module.n_arms, -1, -1)
                    if self.module.likelihood == GAUSSIAN:
                        target, nb_library = x, None
                    else:
                        counts = self.data.gather(index)
                        target = counts.unsqueeze(0).expand(self.module.n_arms, -1, -1)
                        nb_library = target.sum(dim=-1, keepdim=True)
                    depth = None
                    if self.module.depth_covariate:
                        depth = self.module.depth(self.data.library_of(index).view(1, -1, 1)).expand(self.module.n_arms, -1, -1)
                    terms = self._objective(self.module(x, depth=depth), target, nb_library, step=self.step)
                    losses.append(float(terms.total))
                    weights.append(len(rows))
                validation_loss = float(np.average(losses, weights=weights))
        finally:
            self.module.train()
        event = Evaluation(
            step=self.step,
            agreement=agreement.agreement if agreement is not None else np.zeros(0),
            mean_agreement=agreement.mean if agreement is not None else None,
            min_agreement=agreement.min if agreement is not None else None,
            validation_loss=validation_loss,
            n_cells_evaluated=len(self._evaluation_rows),
        )
        self.evaluations.append(event)
        return event

    @property
    def is_main(self) -> bool:
        return self.distributed is None or self.distributed.is_main

    def check_parameters_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` when an update left a NaN/Inf weight (one host sync); run before
        a state is kept, so a checkpoint never holds one."""
        parameters = [p.detach() for p in self.module.parameters()]
        finite = torch.stack([torch.isfinite(p).all() for p in parameters]).cpu().numpy()
        if not finite.all():
            names = [name for (name, _), ok in zip(self.module.named_parameters(), finite) if not ok]
            raise NonFiniteLossError(self.step, [f"weights ({', '.join(names[:3])})"])

    def snapshot(self) -> Checkpoint:
        """A copy on the host of what a checkpoint holds (weights, Adam state, step, random streams)."""
        optimizer = self.optimizer.state_dict()
        return Checkpoint(
            model_state={k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()},
            config=self.config.to_dict(),
            preprocessing=self.prepared.preprocessing.to_dict(),
            step=self.step,
            optimizer_state={
                "state": {
                    index: {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in values.items()}
                    for index, values in optimizer["state"].items()
                },
                "param_groups": [dict(group) for group in optimizer["param_groups"]],
            },
            rng_state={k: v.clone() for k, v in self.rng_state().items()},
        )

    def save(self, path: str | Path | None = None) -> Path | None:
        self.check_parameters_finite()  # on every process (the weights are the same on all)
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None or not self.is_main:
            return None
        save_checkpoint(
            path,
            model=self.module,
            config=self.config.to_dict(),
            preprocessing=self.prepared.preprocessing.to_dict(),
            step=self.step,
            optimizer=self.optimizer,
            rng_state=self.rng_state(),
            extra={**self.checkpoint_extra, "augment": self.augment_name, "fast_path": self.fast_path,
                   **({"type_init": self.type_init_summary} if self.type_init_summary else {}),
                   **({"neighbours": self.neighbor_search} if self.neighbor_search else {}),
                   "state_kl_warmup_steps": self.state_kl_warmup_steps,
                   **({"lr_decay_window": list(self.lr_decay_window)} if self.lr_decay_window else {})},
        )
        self.events.publish(CheckpointSaved(step=self.step, path=str(path)))
        return path

    def _restart_from(self, good: Checkpoint, error: NonFiniteLossError, restarts_left: int) -> TrainingRestarted:
        """Return to the state ``good`` with the learning rate times ``nan_restart_lr_factor``."""
        rates = [group["initial_lr"] for group in self.optimizer.param_groups]  # already lowered by earlier restarts
        self.restore(good)
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["initial_lr"] = rate * self.config.nan_restart_lr_factor
            group["lr"] = group["initial_lr"] * lr_factor(self.step, self.lr_decay_window)
        self._first_bad_step.fill_(-1)
        self._bad_terms.zero_()
        self._graph = None  # the optimizer's state tensors were replaced: capture again
        kept = [steps <= self.step for steps in self._history_steps]
        self._history_values = [values[keep] for values, keep in zip(self._history_values, kept) if keep.any()]
        self._history_steps = [steps[keep] for steps, keep in zip(self._history_steps, kept) if keep.any()]
        self.evaluations = [e for e in self.evaluations if e.step <= self.step]
        return TrainingRestarted(
            start_step=self.step, total_steps=self._total_steps, device=str(self.device), fast_path=self.fast_path,
            n_cells=self.data.n_cells, n_types=self.module.n_types, n_arms=self.module.n_arms,
            metric_names=self.metric_names, failed_step=error.step, terms=list(error.terms),
            learning_rate=float(self.optimizer.param_groups[0]["lr"]), restarts_left=restarts_left,
        )

    def _checkpoint_time_due(self, last_checkpoint_time: float) -> bool:
        """``checkpoint_seconds`` of wall time have passed since the last checkpoint (0: never by time).
        In distributed training rank 0's clock decides for all at each log read (one collective per
        ``log_every`` steps), so every process saves at the same step."""
        seconds = self.config.checkpoint_seconds
        if not seconds:
            return False
        if self.distributed is not None and self.step % self.log_every:
            return False
        due = time.perf_counter() - last_checkpoint_time >= seconds
        if self.distributed is not None:
            due = bool(self.distributed.broadcast_object(due))
        return due

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, total_steps: int | None = None) -> TrainingResult:
        """Train until step ``total_steps`` (counted from 0, so a resumed run continues to the same end).

        Stops early, keeping a checkpoint, when the control object asks; raises :class:`NonFiniteLossError`
        naming the first bad step (the last good checkpoint stays on disk), unless ``config.nan_restarts``
        allows going back to the last good state with the learning rate times ``nan_restart_lr_factor``.
        """
        self._total_steps = total_steps = self.total_steps_for(total_steps) if total_steps is not None else self.total_steps_for()
        if self.lr_decay_window is None or self.lr_decay_window[1] != total_steps:
            self.lr_decay_window = lr_decay_window(self.config, self.step, total_steps)
        needs_partition = self.step < min(self.type_init_end, total_steps) or self.type_prior_weight > 0
        if needs_partition and self.type_init_end and self.type_targets is None:
            self.prepare_type_init()
        self.module.train()
        if self.fast_path == "compile" and self._compiled_loss is None:
            self._compiled_loss = torch.compile(self._loss, dynamic=False)
        self.events.publish(
            TrainingStarted(
                start_step=self.step, total_steps=total_steps, device=str(self.device), fast_path=self.fast_path,
                n_cells=self.data.n_cells, n_types=self.module.n_types, n_arms=self.module.n_arms,
                metric_names=self.metric_names,
            )
        )
        started = last_time = time.perf_counter()
        first_step = last_read = self.step
        last_checkpoint, last_checkpoint_time = self.step, started
        status, message = "completed", f"trained to step {total_steps}"
        restarts_left, restarts = self.config.nan_restarts, []
        last_good = self.snapshot() if restarts_left > 0 else None
        while True:
            try:
                while self.step < total_steps:
                    if self.fast_path == "graph" and self._graph is None and self.step >= self.type_init_end:
                        self._capture_graph(warmup_steps=3, last_step=total_steps)
                        continue
                    if self.control.stop_requested:
                        status, message = "stopped", self.control.stop_reason or "stopped by request"
                        break
                    if self.control.paused:
                        self.control.wait_while_paused()
                        continue
                    self._run_step()
                    if self.type_init_open and self.type_targets is not None and self.step >= self.type_init_end:
                        self._check_warm_up(total_steps)
                    evaluation_due = self.step % self.config.eval_every == 0 or (
                        self.step == total_steps and self.evaluate_at_end
                    )
                    checkpoint_due = (
                        self.step - last_checkpoint >= self.config.checkpoint_every
                        or self._checkpoint_time_due(last_checkpoint_time)
                    ) and (self.checkpoint_path is not None or last_good is not None)
                    # metrics are read (and checked for non-finite values) before any evaluation or checkpoint
                    if self.step - last_read >= self.log_every or evaluation_due or checkpoint_due:
                        event = self._read_metrics(last_read, started, last_time)
                        last_read, last_time = self.step, time.perf_counter()
                        if event is not None:
                            self.events.publish(event)
                    if evaluation_due and self.is_main:
                        self.events.publish(self.evaluate())
                    if checkpoint_due:
                        self.save()  # checks the weights first, with or without a checkpoint path
                        if last_good is not None:
                            last_good = self.snapshot()
                        last_checkpoint, last_checkpoint_time = self.step, time.perf_counter()
                event = self._read_metrics(last_read, started, last_time)
                if event is not None:
                    self.events.publish(event)
                if self.checkpoint_path is not None and (self.step > last_checkpoint or status == "stopped"):
                    self.save()
                break
            except NonFiniteLossError as error:
                # a fault in the data repeats on every restart; only a diverged update is worth restarting
                if restarts_left <= 0 or last_good is None or "input batch" in error.terms:
                    self.events.publish(TrainingFinished(self.step, "failed", str(error), time.perf_counter() - started))
                    raise
                restarts_left -= 1
                restarted = self._restart_from(last_good, error, restarts_left)
                restarts.append({"failed_step": error.step, "terms": list(error.terms), "restarted_from": self.step,
                                 "learning_rate": restarted.learning_rate})
                warnings.warn(restarted.message, stacklevel=2)
                self.events.publish(restarted)
                last_read = last_checkpoint = self.step
                last_time = last_checkpoint_time = time.perf_counter()
            except BaseException as error:
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                self.events.publish(TrainingFinished(self.step, "failed", message, time.perf_counter() - started))
                raise
        elapsed = time.perf_counter() - started
        self.events.publish(TrainingFinished(self.step, status, message, elapsed))
        return TrainingResult(
            step=self.step,
            status=status,
            elapsed_seconds=elapsed,
            steps_per_second=(self.step - first_step) / max(elapsed, 1e-9),
            history_steps=np.concatenate(self._history_steps) if self._history_steps else np.zeros(0, int),
            history_values=np.concatenate(self._history_values) if self._history_values else np.zeros((0, len(self.metric_names))),
            metric_names=self.metric_names,
            evaluations=list(self.evaluations),
            restarts=restarts,
        )
