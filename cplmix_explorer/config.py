"""The one place for defaults: every option of the model, the training engine and the data path.

:class:`CplMixConfig` is a ``param.Parameterized`` so that the CLI (``cplmix train`` flags), the Python API
(keyword arguments) and the app (a form made with ``pn.Param``) are generated from the same declarations,
with the same bounds and the same documentation. ``param`` is a plain-Python library; nothing here imports a
UI toolkit.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import param

from .errors import CplmixError

#: Numerical floor inside every log and square root of the coupling distance (method.md).
COUPLING_EPS = 1e-8
#: Library size that counts are scaled to before log1p (as scanpy's ``normalize_total`` default of 1e4).
TARGET_SUM = 1e4
#: Default hops of the neighbor walks (``neighbor_steps`` None): one for expression data, where each arm sees a
#: direct neighbor of the cell (longer walks cross from small types into their neighbors, so the arms disagree on
#: the types themselves), two for images (benchmarks/HISTORY.md has the comparisons).
NEIGHBOR_STEPS_EXPRESSION = 1
NEIGHBOR_STEPS_IMAGES = 2
#: Types per unit of the type encoder's bottleneck when ``type_bottleneck_dim`` is unset and K is large.
TYPES_PER_TYPE_BOTTLENECK_UNIT = 4
#: Principal components the neighbor graph is found in when ``neighbor_components`` is unset and K is at most
#: this (scanpy's default); with more types, K of them.
NEIGHBOR_COMPONENTS = 50
#: Options of :class:`CplMixConfig` that decide how a dataset is prepared (the data path, ``data.preprocess``).
DATA_OPTIONS = ("n_genes", "normalize", "layer", "deskew_images")
#: Weight of the cross-entropy that fits the type heads to the initial partition during the warm-up (per cell
#: and arm; large against the objective so that the partition is taken over).
TYPE_INIT_WEIGHT = 1000.0
#: Steps between checks of the type heads' fit to the initial partition once ``type_init_steps`` have passed.
TYPE_INIT_CHECK_STEPS = 50
#: Training cells of each start category (a fixed random sample) on which that fit is checked.
TYPE_INIT_CHECK_CELLS_PER_TYPE = 64

class OptionSet(param.Parameterized):
    """Validated options with JSON round trips; one-line :class:`CplmixError` for unknown or bad values."""

    def to_dict(self) -> dict[str, Any]:
        """All option values as a JSON-serialisable dict (without param's ``name``)."""
        return {k: v for k, v in self.param.values().items() if k != "name"}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build the options, turning param's validation errors into one-line :class:`CplmixError`."""
        config = cls()
        config.update(**values)
        return config

    def update(self, *, names: Callable[[str], str] | None = None, **values: Any):
        """Set options with validation; unknown names and out-of-bounds values raise :class:`CplmixError`.

        The message names the option as ``names(option)`` (the CLI passes :func:`cli_flag`, so a user reads
        ``--types``) or, by default, by its keyword (``n_types``), as the Python API takes it."""
        names = names or str
        known = set(self.param) - {"name"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CplmixError(f"unknown option(s): {', '.join(names(u) for u in unknown)}")
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value) and isinstance(self.param[key], param.Number):
                raise CplmixError(f"invalid value for {names(key)}: {value} is not a finite number")
            try:
                setattr(self, key, value)
            except (ValueError, TypeError) as error:
                raise CplmixError(f"invalid value for {names(key)}: {_param_message(error)}") from None
        return self

    def copy(self, **changes: Any):
        return type(self).from_dict({**self.to_dict(), **changes})


class CplMixConfig(OptionSet):
    """Hyperparameters of a cpl-mixVAE run: model shape, objective weights, training and data options."""

    # -- model ---------------------------------------------------------------------------------------------
    n_types = param.Integer(10, bounds=(2, 1000), doc="Number of types K (categories) each arm can assign.")
    state_dim = param.Integer(2, bounds=(1, 128), doc="Continuous state dimensions S per arm.")
    n_arms = param.Integer(2, bounds=(1, 10), doc="Number of coupled autoencoder arms A (1 = a single mixture VAE).")
    hidden_dim = param.Integer(100, bounds=(4, 8192), doc="Width of the hidden layers of encoder and decoder.")
    n_hidden_layers = param.Integer(4, bounds=(1, 16), doc="Hidden layers in the encoder (and decoder).")
    bottleneck_dim = param.Integer(
        10, bounds=(2, 1024),
        doc="Width of the state encoder's bottleneck h (the latent the state reads) and of the decoder's first layer; "
        "the type encoder's too unless type_bottleneck_dim widens it.",
    )
    type_bottleneck_dim = param.Integer(
        None, bounds=(2, 1024), allow_None=True,
        doc="Width of the type encoder's bottleneck, which the type head reads the K types from. Unset (None): "
        f"bottleneck_dim, or K / {TYPES_PER_TYPE_BOTTLENECK_UNIT} (rounded up) when that is wider: with many types "
        "in ten dimensions each arm's type head learns the start only in part, and the arms disagree where each errs.",
    )
    input_dropout = param.Number(0.2, bounds=(0.0, 0.95), doc="Dropout rate on the encoder input.")
    state_dropout = param.Number(
        0.0, bounds=(0.0, 0.95), doc="Dropout rate on the state sample entering the decoder (as the reference)."
    )
    likelihood = param.Selector(
        default="gaussian", objects=["gaussian", "nb"],
        doc="Reconstruction likelihood: Gaussian on log-expression, or negative binomial on raw counts.",
    )
    gene_variance = param.Selector(
        default="fixed", objects=["fixed", "batch"],
        doc="Gaussian likelihood only: 'fixed' unit variance (the paper's 1/2 squared error), or 'batch': each "
        "gene's variance at its maximum-likelihood value in the mini-batch (per arm), so that genes the decoder "
        "cannot predict (noise) weigh less than genes it can; the logged reconstruction is then that negative "
        "log-likelihood, which can be below 0.",
    )
    tau = param.Number(
        0.1, bounds=(1e-3, 100.0),
        doc="Softmax temperature of the categorical posterior q(c|x) = softmax(logits / tau), one softmax. 0.1 lets "
        "the type head reach confident posteriors within the warm-up; at 1 the head on its 10-d bottleneck stays "
        "near uniform over many types and the argmax, not the posterior, decides the type.",
    )
    gumbel_temperature = param.Number(
        3.0, bounds=(1e-3, 100.0),
        doc="Temperature T of the Gumbel-softmax relaxed type sample during training, softmax((logits / tau + g) / T). "
        "With the confident posteriors of tau 0.1, T = 1 hands the decoder one-hot samples; T = 3 keeps them soft, "
        "so that the decoder learns each type's response to the state rather than one shared response.",
    )
    straight_through = param.Boolean(
        False, doc="Straight-through Gumbel-softmax: the decoder and state head see the one-hot type in training "
        "(relaxed-sample gradients), so the type cannot carry a continuous code.",
    )
    state_depends_on_type = param.Boolean(
        True, doc="State posterior q(s|c,x) conditioned on the type; False is the s-independent-of-c ablation."
    )
    depth_covariate = param.Boolean(
        True,
        doc="Count data: the decoder also reads each cell's log library size (standardised), an observed covariate "
        "as in scVI, so that sequencing depth (more zeros in shallow cells) is not taken up by a state dimension; "
        "off (--no-depth-covariate) is the paper's decoder. Ignored when X is not raw counts.",
    )
    state_encoder = param.Selector(
        default="separate", objects=["separate", "shared"],
        doc="Where the state posterior q(s|c,x) reads the cell: a second encoder of the type encoder's shape "
        "(separate) or the type encoder's bottleneck (shared, the paper's network). The coupling trains only the "
        "type encoder; with neighbor copies it makes that encoder blind to within-type variation, so a shared "
        "state loses the within-type state.",
    )
    state_bottleneck = param.Selector(
        default="linear", objects=["linear", "relu"],
        doc="Activation of the separate state encoder's bottleneck before its BatchNorm: none (linear), or ReLU "
        "as in the type encoder: with ReLU some cells had every unit at zero and so shared one state.",
    )
    share_arm_parameters = param.Boolean(False, doc="All arms share one set of weights (ablation).")

    # -- objective -----------------------------------------------------------------------------------------
    lam = param.Number(
        1.0, bounds=(0.0, None),
        doc="Coupling weight lambda of the arm-to-arm distance (1, as the paper; with coupling_spread='absolute' the "
        "distance grows like K^2 and 0.1 or less keeps small types).",
    )
    beta = param.Number(1.0, bounds=(0.0, None), doc="Weight beta of the state KL term.")
    state_kl_warmup = param.Number(
        0.5, bounds=(0.0, 1.0),
        doc="Share of the run (the first training call's steps or epochs; else the options' schedule) over "
        "which the state KL weight rises linearly from 0 to beta (scVI's KL warm-up): the state's dimensions are "
        "in use before the KL can switch them off for good (a state dimension the decoder has learnt to ignore "
        "gets no gradient to come back); 0 = beta from the first step, as the paper.",
    )
    coupling_floor = param.Number(
        1e-2, bounds=(0.0, 1.0), inclusive_bounds=(False, False),
        doc="Floor epsilon inside the log of the coupling distance, log(q + epsilon): probabilities below it count "
        "as equal in both arms, so confident arms that agree on the type cost nothing whatever their tiny "
        "probabilities (the square root of the batch variance keeps its own 1e-8).",
    )
    coupling_spread = param.Selector(
        default="none", objects=["absolute", "relative", "none"],
        doc="sigma of the coupling distance: 'none' (sigma = 1: the squared difference of the arms' log "
        "probabilities, every cell's disagreement costs the same), 'absolute', each category's batch standard "
        "deviation (the paper's), or 'relative', that deviation over the arm's root mean variance across "
        "categories. Dividing by a category's spread makes a disagreement on a rare type's cell dearer than one on "
        "a common type's, so the arms stop using small types' categories (they merge); the absolute form also "
        "grows like K^2 with the number of types.",
    )
    entropy_weight = param.Number(
        1.0, bounds=(0.0, None),
        doc="Weight of the arms' type entropy terms -H(c|x) (1 in the paper; 0 drops this confidence penalty).",
    )
    marginal_entropy_weight = param.Number(
        0.0, bounds=(0.0, None),
        doc="Weight w of -w * H(mean q(c|x)) per arm, the entropy of each arm's category marginal over the batch "
        "(the mutual-information form of clustering objectives, IMSAT / IIC): rewards using every category. 0 is "
        "the paper's objective.",
    )
    coupled = param.Boolean(
        True, doc="Couple the arms (distance + entropy terms); False trains independent arms (ablation)."
    )
    objective = param.Selector(
        default="cplmix", objects=["cplmix", "jointvae"],
        doc="cplmix: the coupled objective (paper Eq. 7); jointvae: the JointVAE baseline (Dupont 2018), each arm "
        "on its own with both KL terms pushed toward a growing capacity (use with --arms 1).",
    )
    capacity_gamma = param.Number(
        30.0, bounds=(0.0, None), doc="JointVAE: weight gamma of gamma * |KL - C| for each latent (Dupont's value)."
    )
    state_capacity = param.Number(
        5.0, bounds=(0.0, None), doc="JointVAE: final capacity C (nats) of the continuous state KL."
    )
    type_capacity = param.Number(
        5.0, bounds=(0.0, None),
        doc="JointVAE: final capacity C (nats) of the type KL against a uniform prior, capped at log K.",
    )
    capacity_steps = param.Integer(
        25000, bounds=(1, None), doc="JointVAE: steps over which both capacities grow linearly from 0."
    )

    # -- training ------------------------------------------------------------------------------------------
    type_init = param.Selector(
        default="leiden", objects=["leiden", "random"],
        doc="Where the categories start: 'leiden' fits the arms' type heads during the first type_init_steps "
        "steps to K groups of the cells' 15-nearest-neighbor graph (Leiden communities, see start_overcluster; top "
        "neighbor_components PCs; the graph the neighbor walks use), then the objective alone refines them; 'random' starts from the random network, "
        "as the paper.",
    )
    type_init_steps = param.Integer(
        300, bounds=(0, None),
        doc="type_init='leiden': training steps during which a cross-entropy toward the initial partition is "
        "added to the objective, at least (see type_init_fit; 0 = no initial partition).",
    )
    type_init_fit = param.Number(
        0.9, bounds=(0.0, 1.0),
        doc="type_init='leiden': after type_init_steps the warm-up goes on, checked every "
        f"{TYPE_INIT_CHECK_STEPS} steps, until every arm puts at least this fraction of the cells of a start "
        "category in it, on average over the categories (at most until half of the run's steps): the more types and cells, the more steps the "
        "type heads need to learn the partition, and one that is only half learnt when the objective takes over "
        "is merged. 0: exactly type_init_steps steps.",
    )
    leiden_weights = param.Selector(
        default="umap", objects=["umap", "uniform"],
        doc="type_init='leiden': edge weights of the neighbor graph the start partition is found in: 'umap', the "
        "fuzzy simplicial set memberships scanpy's sc.pp.neighbors gives (a neighbor weighs less the farther it is "
        "beyond the cell's nearest), or 'uniform' (1 between mutual neighbors, 1/2 otherwise).",
    )
    start_overcluster = param.Number(
        2.0, bounds=(1.0, 10.0),
        doc="type_init='leiden': the start partition is found among this many times K Leiden communities, joined "
        "down to K pair by pair (the pair in which the smaller group sends the largest share of its edge weight to "
        "the other first): at the one resolution that gives K, modularity cuts large types in pieces and lumps "
        "small ones together; 1 = Leiden at K itself.",
    )
    start_candidates = param.Integer(
        1, bounds=(1, 64),
        doc="type_init='leiden': Leiden runs (each its own seed) the start is chosen among: the runs that the others "
        "reproduce best (mean adjusted Rand index with them) become the arms' starts, the most reproduced the "
        "first arm's. 1 (or at most the runs start_per_arm needs): one run per arm, as drawn. More agree better "
        "with the types but share their made-up cuts, so that the arms agree on them and pruning cannot find them.",
    )
    start_per_arm = param.Boolean(
        True,
        doc="type_init='leiden': a Leiden run for each arm (its own seed, aligned to the first arm's categories); "
        "cuts that only make up the number K fall differently in each run, and only the cells the runs agree on are "
        "held to them (start_agreed_only). False: one partition for all arms (they then agree on made-up "
        "categories too).",
    )
    start_agreed_only = param.Boolean(
        True,
        doc="type_init='leiden' with start_per_arm: the warm-up and the prior hold each arm to its run's category "
        "only on the cells to which every arm's Leiden run gives the same one; a cell the runs place differently (a "
        "cut that one run makes and another does not) is held to any of the runs' categories (start_any_run) or left "
        "to the objective and the coupling. False: each arm is held to its own run on every cell, so the arms keep "
        "disagreeing where the runs do.",
    )
    start_any_run = param.Boolean(
        True,
        doc="With start_agreed_only: a cell the arms' Leiden runs place differently is held to any of the runs' "
        "categories (the prior's cross-entropy is minus the log of their summed probability), so that the objective "
        "chooses among the runs' answers for it rather than beyond them. False: such a cell is left free.",
    )
    type_prior_weight = param.Number(
        10.0, bounds=(0.0, None),
        doc="type_init='leiden': after the warm-up, weight (nats per cell and arm) of the cross-entropy that keeps "
        "each arm's q(c|x) near the initial partition, so that it stays a prior the objective can overrule where "
        "the data disagree, instead of a start it can drift from; 0 = the objective alone after the warm-up.",
    )
    steps = param.Integer(5000, bounds=(1, None), doc="Training steps (mini-batches); ignored when epochs is set.")
    epochs = param.Number(None, bounds=(0.0, None), allow_None=True, doc="Training epochs over the training cells.")
    batch_size = param.Integer(256, bounds=(2, None), doc="Cells per mini-batch.")
    lr = param.Number(1e-3, bounds=(0.0, 1.0), inclusive_bounds=(False, True), doc="Adam learning rate.")
    lr_decay = param.Number(
        0.3, bounds=(0.0, 1.0),
        doc="Share of each training call's steps, at its end, over which the learning rate falls linearly to 0: "
        "the arms settle on one type per cell instead of stopping mid-step, where each would still move cells "
        "the other has placed; 0 = a constant rate, as the paper.",
    )
    seed = param.Integer(0, bounds=(0, 2**31 - 1), doc="Random seed: same seed, same result on the same device.")
    device = param.String("auto", doc="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    validation_fraction = param.Number(
        0.1, bounds=(0.0, 0.5), doc="Fraction of cells held out to report the validation loss."
    )
    augment = param.Selector(
        default="auto", objects=["auto", "none", "noise", "neighbors", "generative", "affine"],
        doc="Type-preserving copy each arm sees: auto picks neighbors with 2 or more arms (any number of cells) "
        "and otherwise affine for images, none for expression data; neighbors: the end of a random walk "
        "of neighbor_steps hops among the cells' 15 nearest neighbors (top neighbor_components PCs); generative needs a trained augmenter.",
    )
    augment_strength = param.Number(0.1, bounds=(0.0, 0.9), doc="Strength of the noise/affine augmentation.")
    neighbor_steps = param.Integer(
        None, bounds=(1, 100), allow_None=True,
        doc="augment='neighbors': hops of the random walk on the 15-nearest-neighbor graph that picks each arm's "
        f"copy (1 = a direct neighbor; more hops move the copy along its type's continuous state). Unset (None): "
        f"{NEIGHBOR_STEPS_EXPRESSION} for expression data, {NEIGHBOR_STEPS_IMAGES} for images.",
    )
    neighbor_ramp_steps = param.Integer(
        300, bounds=(0, None),
        doc="augment='neighbors': training steps over which the walks grow from one hop to neighbor_steps (0 = full "
        "length from the first step); short walks first let the categories settle on groups before long walks "
        "make a split along a continuum costly.",
    )
    neighbor_components = param.Integer(
        None, bounds=(2, 1000), allow_None=True,
        doc="Principal components the 15-nearest-neighbor graph (walks and the Leiden start) is found in. Unset "
        f"(None): {NEIGHBOR_COMPONENTS} (as scanpy), or n_types when more types are asked for: types with "
        "markers of their own need about one dimension each, and in fewer components the small ones merge.",
    )
    neighbor_target_sum = param.Number(
        None, bounds=(0.0, None), inclusive_bounds=(False, True), allow_None=True,
        doc="Count data: the 15-nearest-neighbor graph (walks and the Leiden start) is found in log1p(counts / the "
        "cell's total x this), whatever target_sum the model input uses. Unset (None): the training cells' median "
        "total, as scanpy's sc.pp.normalize_total when given no target. Scaled to 10^4, a cell of a few hundred "
        "counts has each detected gene far above the undetected ones, so cells of low depth share the pattern of "
        "which genes were detected and find each other across types.",
    )
    neighbor_scale_genes = param.Boolean(
        True,
        doc="Expression data: find the 15-nearest-neighbor graph (walks and the Leiden start) in the top principal "
        "components of the genes standardised to unit variance and clipped at 10, as scanpy's standard pipeline "
        "(sc.pp.scale before sc.pp.pca), so that the markers of small types count as much as those of large "
        "ones; False: of the unscaled model input. Images always keep their pixels.",
    )
    augmenter_path = param.String(None, allow_None=True, doc="Trained generative augmenter for augment='generative'.")
    fast_path = param.Selector(
        default="auto", objects=["auto", "eager", "graph", "compile"],
        doc="Training step execution: auto = CUDA graph on CUDA, eager on CPU.",
    )
    log_every = param.Integer(25, bounds=(1, None), doc="Steps between reads of the loss metrics (one host sync).")
    eval_every = param.Integer(250, bounds=(1, None), doc="Steps between arm-agreement and validation evaluations.")
    checkpoint_every = param.Integer(1000, bounds=(1, None), doc="Steps between periodic checkpoints of a run.")
    checkpoint_seconds = param.Number(
        60.0, bounds=(0.0, None),
        doc="Also checkpoint once this many seconds of training have passed since the last checkpoint, whichever "
        "of steps and seconds comes first, so a killed run loses at most this much work (0: by steps only).",
    )
    threads = param.Integer(
        None, bounds=(1, 4096), allow_None=True,
        doc="CPU threads of the training process (torch.set_num_threads). Unset: the cores this process may use "
        "(its CPU affinity and cgroup CPU quota, at most OMP_NUM_THREADS when set), one fewer when the app "
        "trains, so its server keeps a core; the number used is recorded in run.json and metrics.json.",
    )
    nan_restarts = param.Integer(
        0, bounds=(0, 100),
        doc="After a non-finite loss, restart this many times from the last good checkpoint with a lower learning rate.",
    )
    nan_restart_lr_factor = param.Number(
        0.5, bounds=(0.0, 1.0), inclusive_bounds=(False, False),
        doc="Factor applied to the learning rate at each automatic restart after a non-finite loss.",
    )

    # -- data ----------------------------------------------------------------------------------------------
    n_genes = param.Integer(5000, bounds=(1, None), doc="Keep at most this many highly variable genes.")
    normalize = param.Selector(
        default="auto", objects=["auto", "none"],
        doc="auto: raw counts are library-size normalised and log1p'd; none: X is used as it is.",
    )
    target_sum = param.Number(
        TARGET_SUM, bounds=(0.0, None), inclusive_bounds=(False, True),
        doc="Raw counts: the total each cell's counts are scaled to before log1p for the model input (the neighbor "
        "graph has its own, neighbor_target_sum). Near the cells' median total, low counts weigh less: on the "
        "development suite that typed the mouse bladder better but lost most of the simulator's activity state.",
    )
    layer = param.String(None, allow_None=True, doc="AnnData layer to read instead of X.")
    backed = param.Boolean(
        None, allow_None=True,
        doc="Read an .h5ad file backed: X stays on disk and is scanned in row chunks, only the selected genes are "
        "held (unset: backed when X is larger than 1 GiB). The result is the same either way.",
    )
    deskew_images = param.Boolean(
        True,
        doc="Images (uns['image_shape']): shear each image upright and centre it by its intensity moments "
        "(deskewing, the standard preprocessing of handwritten digits; LeCun et al. 1998) before the model, the "
        "neighbor graph and the initial partition see it; ignored for expression data.",
    )
    drop_empty_cells = param.Boolean(
        False,
        doc="Drop the cells without any counts (all-zero rows of X or the layer) before training instead of "
        "refusing the data; how many were dropped is recorded in run.json and metrics.json.",
    )
    labels = param.String(None, allow_None=True, doc="obs column of known labels, used only for evaluation.")


class AugmenterConfig(OptionSet):
    """Options of the generative augmenter (U-DAGAN style, paper Supplementary F) and of its training.

    The data options (genes, normalisation, layer), the device and the seed are those of
    :class:`CplMixConfig`, so that the augmenter sees the data exactly as the cpl-mixVAE will."""

    latent_dim = param.Integer(10, bounds=(2, 1024), doc="Latent dimensions of the generator (the vicinity lives here).")
    noise_dim = param.Integer(50, bounds=(1, 1024), doc="Dimensions of the random input that perturbs the latent.")
    hidden_dim = param.Integer(256, bounds=(4, 8192), doc="Width of the hidden layers of generator and discriminator.")
    n_hidden_layers = param.Integer(2, bounds=(1, 8), doc="Hidden layers of the generator's encoder and decoder.")
    input_dropout = param.Number(0.2, bounds=(0.0, 0.95), doc="Dropout on the generator's input while it trains.")
    steps = param.Integer(2000, bounds=(1, None), doc="Training steps (mini-batches) of the augmenter.")
    batch_size = param.Integer(256, bounds=(4, None), doc="Cells per mini-batch.")
    lr = param.Number(1e-3, bounds=(0.0, 1.0), inclusive_bounds=(False, True), doc="Adam learning rate (both networks).")
    adversarial_weight = param.Number(1.0, bounds=(0.0, None), doc="Weight of the adversarial term.")
    reconstruction_weight = param.Number(1.0, bounds=(0.0, None), doc="Weight of the reconstruction term.")
    triplet_weight = param.Number(1.0, bounds=(0.0, None), doc="Weight of the triplet (diversity) term.")
    feature_weight = param.Number(1.0, bounds=(0.0, None), doc="Weight of the feature (vicinity) term.")
    triplet_margin = param.Number(
        0.05, bounds=(0.0, None),
        doc="Triplet margin: how much farther (mean squared log-expression per gene) a copy sits from its cell "
        "than the noise-free reconstruction.",
    )



class PruningOptions(OptionSet):
    """Options of consensus pruning (``workflows.pruning.prune``), declared once for ``cplmix prune``, the API and
    the app's Consensus tab, so that the three prune alike."""

    min_consensus = param.Number(
        0.95, bounds=(0.0, 1.0), inclusive_bounds=(False, True),
        doc="Agreement every surviving type must reach; pruning stops when all do.",
    )
    min_types = param.Integer(2, bounds=(2, None), doc="Never prune below this many types.")
    fine_tune_steps = param.Integer(
        None, bounds=(0, None), allow_None=True,
        doc="Fine-tuning steps after each removal; unset: a tenth of the run's training steps, at least 100.",
    )


def default_fine_tune_steps(training_steps: int) -> int:
    """Pruning's fine-tuning steps per round when unset: a tenth of the run's training steps, at least 100."""
    return max(100, int(training_steps) // 10)

def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _param_message(error: Exception) -> str:
    """param's message without its internal name: "Integer parameter 'CplMixConfig.n_types' must be at most
    1000, not 5000." -> "must be at most 1000, not 5000"."""
    text = re.sub(r"^\w+ parameter '[\w.]+' ", "", _first_line(error)).rstrip(".")
    text = re.sub(r"not value of <class '([\w.]+)'>", r"not a value of type \1", text)
    return re.sub(r"<class '([\w.]+)'>", r"\1", text)


#: Flags of ``cplmix train`` for each option (the CLI contract of the README); other options get
#: ``--option-name`` with dashes.
CLI_FLAGS: dict[str, str] = {
    "n_types": "--types",
    "state_dim": "--state-dim",
    "n_arms": "--arms",
    "steps": "--steps",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "lam": "--lam",
    "tau": "--tau",
    "beta": "--beta",
    "device": "--device",
    "seed": "--seed",
    "labels": "--labels",
    "n_genes": "--genes",
    "normalize": "--normalize",
    "gumbel_temperature": "--gumbel-temp",
    "fine_tune_steps": "--steps",  # cplmix prune
}


def cli_flag(name: str) -> str:
    return CLI_FLAGS.get(name, "--" + name.replace("_", "-"))


class TraversalOptions(OptionSet):
    """Options of a state traversal (``analysis.traversal.traverse``) and of its heatmap, declared once for
    ``cplmix traverse``, the API and the app's Traversal tab."""

    dim = param.Integer(0, doc="State dimension to sweep.")
    steps = param.Integer(50, bounds=(2, 10000), doc="Rows of the sweep.")
    genes = param.String(
        "MG,IEG,HKG",
        doc="Comma-separated gene groups in column order: MG (markers computed from the data), IEG, HKG, PRG, "
        "rPRG, dPRG, or a text file with one symbol a line.",
    )
    n_markers = param.Integer(20, bounds=(1, None), doc="Marker genes in the MG group.")
    normalize = param.Selector(
        default="zscore", objects=["zscore", "minmax"],
        doc="Display form: z-score against all cells, or min-max per gene across the sweep.",
    )
    percentiles = param.NumericTuple((2.0, 98.0), length=2, doc="Swept range within the type's state distribution (low, high).")
    arm = param.Integer(None, allow_None=True, bounds=(0, None), doc="One arm instead of the arms' mean.")
    max_genes = param.Integer(30, bounds=(0, None), doc="Most driven genes shown per group in a heatmap (0: all).")


class BenchOptions(OptionSet):
    """Options of the throughput benchmark (``workflows.bench.run_benchmark``, ``cplmix bench``) besides the
    model options it shares with training."""

    steps = param.Integer(200, bounds=(1, None), doc="Timed steps after the warm-up.")
    warmup = param.Integer(20, bounds=(0, None), doc="Untimed steps first.")
    cells = param.Integer(None, allow_None=True, bounds=(1, None), doc="Generated cells; unset: max(4 x batch size, 10000).")
    dense = param.Boolean(False, doc="Store the data dense instead of CSR.")


#: The training options the benchmark times with unless told otherwise (the others are CplMixConfig's defaults).
BENCH_CONFIG_DEFAULTS = {"n_types": 115}


CLI_FLAGS["n_markers"] = "--markers"  # cplmix traverse


def type_bottleneck_width(config: CplMixConfig) -> int:
    """The width of a run's type encoder bottleneck (``config.type_bottleneck_dim`` or its default for the run's
    number of types)."""
    if config.type_bottleneck_dim is not None:
        return int(config.type_bottleneck_dim)
    return max(int(config.bottleneck_dim), -(-int(config.n_types) // TYPES_PER_TYPE_BOTTLENECK_UNIT))


def latent_width(config: CplMixConfig) -> int:
    """The width of the latent each arm keeps per cell (``obsm`` and the inference buffers): the state encoder's
    bottleneck with a separate state encoder, the type encoder's (wider with many types) with a shared one."""
    return int(config.bottleneck_dim) if config.state_encoder == "separate" else type_bottleneck_width(config)


def neighbor_components(config: CplMixConfig) -> int:
    """The principal components a run's neighbor graph is found in (``config.neighbor_components`` or its
    default for the run's number of types)."""
    if config.neighbor_components is not None:
        return int(config.neighbor_components)
    return max(NEIGHBOR_COMPONENTS, int(config.n_types))
