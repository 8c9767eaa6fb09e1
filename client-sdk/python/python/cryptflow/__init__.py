"""CryptFlow: federated averaging of model updates that no server sees in the clear.

Each site encrypts its model update under its own fresh round key and uploads it; an
untrusted aggregator sums the uploads; a committee of key managers — run by different
organisations — holds Shamir shares of the sites' keys and releases only the sum of the
contributors' keys, which opens the (weighted) mean and nothing else.

This package is the client: :class:`Client` submits updates (numpy arrays or PyTorch CPU
tensors, or dicts of them such as a model's ``state_dict()``) and fetches means;
:mod:`cryptflow.flwr` plugs it into a Flower app. The work is done by the Rust SDK
(``cryptflow._native``); the GIL is released during encryption, uploads, downloads and
decryption.

Example::

    import numpy as np, cryptflow
    site = cryptflow.Client("https://aggregator.example", token_file="site-0.jwt",
                            committee_file="committee.toml", client_id="site-0",
                            key_file="site-0.key.pem", journal_file="site-0.journal")
    site.submit("round-7", {"fc.weight": np.zeros((10, 64), np.float32)}, count=1200)
    site.wait_for_aggregate("round-7", timeout=600)
    mean = site.fetch_mean("round-7", like={"fc.weight": np.zeros((10, 64), np.float32)}).mean
"""

from __future__ import annotations

import json
import numbers
import operator
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native

__version__: str = _native.VERSION

__all__ = [
    "Aggregate",
    "Clipping",
    "AlreadySubmittedError",
    "BudgetError",
    "round_epsilon",
    "Client",
    "CommitteeError",
    "ConfigError",
    "CryptflowError",
    "InputError",
    "PolicyError",
    "ProtocolError",
    "RefusedError",
    "RoundStateError",
    "VerificationError",
    "UnavailableError",
    "Update",
]

#: An update: one array (a 1-D array is a flat vector), or named tensors in order. Arrays are
#: numpy arrays or PyTorch tensors on the CPU (``cryptflow[torch]``).
Update = Union[np.ndarray, Mapping[str, Any], Any]

#: ``progress(event, done, total)``: ``encrypting`` (values), ``uploading`` (bytes),
#: ``depositing`` (key managers), ``downloading`` (bytes), ``decrypting``.
ProgressCallback = Callable[[str, int, int], None]


class CryptflowError(Exception):
    """Base class of every CryptFlow error. ``problem`` is the server's RFC 7807 problem
    document (a dict with ``status``, ``detail`` and, for bad input, ``field`` and ``limit``)
    when a server refused the request, else ``None``."""

    def __init__(self, message: str, problem: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.problem = problem


class InputError(CryptflowError, ValueError):
    """The caller's update or arguments cannot be used (layout, dtype, non-finite value…)."""


class ConfigError(CryptflowError, ValueError):
    """The client is configured wrongly (URL, token, key, committee file)."""


class RefusedError(CryptflowError):
    """A server refused the request (HTTP 4xx); ``status`` and ``problem`` say why."""

    @property
    def status(self) -> Optional[int]:
        return None if self.problem is None else self.problem.get("status")


class UnavailableError(CryptflowError):
    """A server could not be reached, or kept failing, for the whole retry budget."""


class RoundStateError(CryptflowError):
    """The round does not allow this now (not published yet, failed, closed), or waiting
    for it timed out."""


class ProtocolError(CryptflowError):
    """A server answered something the protocol does not allow (wrong size, bad digest)."""


class CommitteeError(ProtocolError):
    """The key managers' signatures, echoes or releases do not verify against the pinned
    committee file, or too few of them answered."""


class PolicyError(CryptflowError):
    """This client's policy refuses the round (too few contributors, an update already
    submitted elsewhere)."""


class AlreadySubmittedError(PolicyError):
    """The journal says this exact update already went to this round: nothing was sent."""


class BudgetError(PolicyError):
    """The round's privacy charge would take this site past its budget (``dp_epsilon`` at
    ``dp_delta``): nothing was sent. A training stops here."""


class VerificationError(CryptflowError):
    """Evidence that the aggregate was tampered with: recomputed from the uploads the members
    signed it differs, an upload does not match its member's signed digest or cannot be
    fetched for the check, or the mean has a value beyond the clip bound. Never a warning."""


_KINDS = {
    "input": InputError,
    "config": ConfigError,
    "refused": RefusedError,
    "unavailable": UnavailableError,
    "round_state": RoundStateError,
    "protocol": ProtocolError,
    "committee": CommitteeError,
    "policy": PolicyError,
    "already_submitted": AlreadySubmittedError,
    "budget": BudgetError,
    "verification": VerificationError,
}


def _call(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls the native client, turning its errors into the classes above."""
    try:
        return f(*args, **kwargs)
    except _native.NativeError as e:
        kind, message, problem = e.args
        cls = _KINDS.get(kind, CryptflowError)
        raise cls(message, json.loads(problem) if problem else None) from None


def _read(path: Optional[Union[str, os.PathLike]], what: str) -> Optional[str]:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{what} {os.fspath(path)}: {e.strerror}") from None


# Relative rounding error of each output dtype (half an ulp): what writing the mean in it
# adds to the bound, per unit of magnitude.
_UNIT_ROUNDOFF = {"float64": 0.0, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def _dtype_name(a: np.ndarray) -> str:
    return np.dtype(a.dtype).name


_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _native_float(a: np.ndarray) -> np.ndarray:
    """C-contiguous, aligned, native byte order; 0-d arrays stay 0-d."""
    dt = a.dtype.newbyteorder("=")
    return np.require(a, dtype=dt, requirements=["C", "A"])


def _is_torch(a: Any) -> bool:
    """Whether `a` is a PyTorch tensor (without importing torch when it is not)."""
    return type(a).__module__.split(".", 1)[0] == "torch" and hasattr(a, "detach")


def _numpy(a: Any, name: str) -> np.ndarray:
    """`a` as a numpy array with its shape (0-d stays 0-d): numpy arrays and scalars as they
    are, PyTorch tensors on the CPU without copying where numpy has their dtype (bfloat16 is
    widened to float32, exactly). A tensor on another device raises ``InputError``."""
    if _is_torch(a):
        if a.device.type != "cpu":
            raise InputError(
                f"tensor `{name}` is on {a.device}; move the update to the CPU first "
                "(e.g. `{k: v.cpu() for k, v in state_dict.items()}`)"
            )
        t = a.detach()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(a)


def _c_contiguous(a: np.ndarray) -> np.ndarray:
    """`a` in C order, same shape — unlike ``np.ascontiguousarray``, which turns 0-d arrays
    into shape ``(1,)``."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _as_float(
    name: str, a: Any, pass_integers: bool, dict_entry: bool = True
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(float32/float64 array to encrypt, or None) and (array passed through, or None).
    Non-finite values are refused here, naming the tensor and the index."""
    a = _numpy(a, name)
    kind = _dtype_name(a)
    if kind in ("float32", "float64"):
        f = _native_float(a)
    elif kind in ("float16", "bfloat16"):
        f = _c_contiguous(a.astype(np.float32))
    elif a.dtype.kind in "iub":
        if pass_integers and dict_entry:
            return None, a
        if not dict_entry:
            raise InputError(
                f"`{name}` holds {kind} values; an update must be floating point (integer "
                "tensors can only be passed through as entries of a dict, with pass_integers=True)"
            )
        raise InputError(
            f"tensor `{name}` holds {kind} values; integer tensors are not averaged — pass "
            "pass_integers=True to leave them out of the round (and copy them through)"
        )
    else:
        raise InputError(f"tensor `{name}` has dtype {kind}; use float16, bfloat16, float32 or float64")
    finite = np.isfinite(f)
    if not finite.all():
        at = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise InputError(f"tensor `{name}` holds a non-finite value ({f[at]}) at index {at}")
    return f, None


def _whole(value: Any, argument: str, low: int = 0, error: type = None) -> int:
    """An integer argument (Python or numpy int, not a float or bool) at least `low`."""
    error = error or InputError
    if isinstance(value, bool):
        raise error(f"{argument} = {value!r}: must be an integer")
    try:
        v = operator.index(value)
    except TypeError:
        raise error(f"{argument} = {value!r}: must be an integer") from None
    if v < low or v > 2**63 - 1:
        raise error(f"{argument} = {v}: must be between {low} and {2**63 - 1}")
    return v


def _verify_arg(verify: Union[str, int]) -> str:
    """``Client(verify=…)`` as the native layer takes it: a policy name or ``spans:N``."""
    if isinstance(verify, str):
        return verify  # the native layer names a bad one
    n = _whole(verify, "verify", low=1, error=ConfigError)
    if n > 2**32 - 1:
        raise ConfigError(f"verify = {n}: at most {2**32 - 1} spans")
    return f"spans:{n}"


def _number(value: Any, argument: str, error: type) -> float:
    """A real argument (not a bool); its range is checked where it is used, naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{argument} = {value!r}: must be a number")
    return float(value)


def _flag(value: Any, argument: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{argument} = {value!r}: must be True or False")
    return value


def _u32(value: Any, argument: str, low: int, error: type = None) -> int:
    v = _whole(value, argument, low=low, error=error)
    if v > 2**32 - 1:
        raise (error or InputError)(f"{argument} = {v}: must be at most {2**32 - 1}")
    return v


def _positive(value: Any, argument: str) -> float:
    """A finite real argument above zero."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise InputError(f"{argument} = {value!r}: must be a finite number above zero")
    return float(value)


def _tensors(update: Update, pass_integers: bool) -> Tuple[List[Tuple[str, np.ndarray]], Dict[str, np.ndarray]]:
    """An update as ``[(name, float array)]`` in its order, and its integer tensors."""
    if isinstance(update, Mapping):
        floats, ints = [], {}
        for name, a in update.items():
            if not isinstance(name, str):
                raise InputError(f"tensor names must be strings, got {name!r}")
            f, i = _as_float(name, a, pass_integers)
            if f is not None:
                floats.append((name, f))
            if i is not None:
                ints[name] = i
        return floats, ints
    f, _ = _as_float("update", update, False, dict_entry=False)
    assert f is not None
    return [("" if f.ndim == 1 else "array", f)], {}


def _layout(update: Update, pass_integers: bool) -> Dict[str, Any]:
    floats, _ = _tensors(update, pass_integers)
    if len(floats) == 1 and floats[0][0] == "":
        return {"dimension": int(floats[0][1].shape[0])}
    return {"tensors": [{"name": n, "shape": [int(s) for s in a.shape]} for n, a in floats]}


@dataclass(frozen=True)
class Clipping:
    """How much clipping shaped a mean — decrypted with it, so every reader learns it, not only
    the sites that clipped. Each site reports its own clipping, as it sends its own values: a
    dishonest site can misreport it, within what one contribution can say.

    Attributes:
        contributions: contributions of which at least one value was beyond the round's clip
            bound (and clipped to it).
        values_at_least, values_at_most: clipped values over all contributions (equal when the
            round counts them exactly, i.e. whenever a contribution has at most about
            ``clip·max_count / (2·max_abs_error·min_count)`` values — ``max_count/min_count``
            is 1 in uniform rounds; else counted in units and given as a range).
        of_values: values contributed in all (contributors × values per update).
    """

    contributions: int
    values_at_least: int
    values_at_most: int
    of_values: int

    @property
    def any(self) -> bool:
        """Whether any value of any contribution was clipped."""
        return self.contributions > 0

    @property
    def fraction_at_most(self) -> float:
        """The largest fraction of contributed values that may have been clipped."""
        return self.values_at_most / max(self.of_values, 1)


@dataclass
class Aggregate:
    """A round's mean and what came with it.

    Attributes:
        mean: the (weighted) mean, in the round's structure — a 1-D array, or a dict of
            arrays by tensor name — in the dtypes asked for.
        contributors: how many contributions it averages.
        total_weight: the sum of their weights (sample counts; the count for uniform rounds).
        max_abs_error: the largest absolute error of any value of ``mean`` as returned,
            against the exact mean of the contributed values **after clipping** to the round's
            bound: the planner's bound plus the rounding of the output dtype (relative; a
            float16 mean below 6e-5 in magnitude may be off by up to 2^-25 more). When
            ``clipping.any``, the mean of the raw updates may be much further away.
        clipping: how many contributions and values clipping changed (:class:`Clipping`).
        nodes: per key manager, ``{"x": index, "problem": None or why its release was not used}``.
        verified: how many uploads the aggregate was recomputed from (it matched), or
            ``None`` when it was not recomputed.
        sampled_spans: when the aggregate was verified by sampling spans instead, how many
            (every member's span matched its signed root and their sum the aggregate's);
            ``detection_probability`` is then the chance a single tampered span was among
            them — a deterrent, not a proof. ``None`` otherwise.
        detection_probability: see ``sampled_spans``.
        not_verified: why the aggregate was not verified at all (``None`` when it was).
        dp: in a differentially private round, ``{"noise_std", "rounding_std",
            "clipped_contributions", "clipped_contributions_std"}`` — the standard deviation of
            each value's noise, and the noised count of contributions clipping scaled (the only
            clipping signal of a DP round; ``clipping`` then holds it rounded). ``max_abs_error``
            is then a bound each value exceeds with probability at most 2^-128, not a
            guarantee. ``None`` otherwise.
        info: everything else the native client reported (round, transcript, bytes).
    """

    mean: Update
    contributors: int
    total_weight: int
    max_abs_error: float
    clipping: Clipping = field(default_factory=lambda: Clipping(0, 0, 0, 0))
    nodes: List[Dict[str, Any]] = field(default_factory=list)
    verified: Optional[int] = None
    sampled_spans: Optional[int] = None
    detection_probability: Optional[float] = None
    not_verified: Optional[str] = None
    dp: Optional[Dict[str, float]] = None
    info: Dict[str, Any] = field(default_factory=dict)


def round_epsilon(round_info: Mapping[str, Any], delta: float = 1e-5) -> Optional[float]:
    """The ε (at ``delta``) one DP round charges each contributor, from its signed plan
    (``round_info`` as :meth:`Client.round` returns it); ``None`` for a round without DP."""
    charge = round_info["spec"]["plan"].get("dp_charge")
    if charge is None:
        return None
    return _call(_native.dp_epsilon, list(charge), _number(delta, "delta", InputError))


class Client:
    """One site's (or an operator's) handle on an aggregator and the key-manager committee.

    Args:
        aggregator: the aggregator's base URL (``https://…``).
        token, token_file: the bearer token for the aggregator (role ``client`` for a site,
            ``admin`` for an operator, ``reader`` for a roster reader), or the file holding it.
        committee_file: the committee file this site pins (``committee.toml``); needed to
            submit and to fetch.
        client_id, key_file: this site's roster id and its roster key (``cryptflow keygen``,
            PKCS#8 PEM); needed to submit and to fetch.
        reader: fetch means as a roster reader rather than as a contributor.
        journal_file: where this site records which update went to which round (JSON lines,
            created owner-only); an update is never submitted to two rounds (their means would
            differ by it). Required to submit: :meth:`submit` without one raises
            :class:`ConfigError`.
        min_contributors: refuse rounds that declare fewer possible contributors (≥ 2; default
            3, so that one member colluding with the aggregator learns nothing about another
            member's update beyond the mean; ``k`` tolerates ``k − 2``).
        min_tolerated_colluding_nodes: refuse to submit under a committee that tolerates fewer
            key managers colluding with the aggregator (``2t − n − 1``; default 1: ``(4, 3)``
            passes, ``(3, 2)`` is refused with :class:`PolicyError`).
        allow_single_key_manager: accept a committee of one key manager, which reads every
            update if it sides with the aggregator (default ``False``).
        retry_budget: seconds to keep retrying a server that is unreachable or busy.
        ca_file: a PEM bundle of certificate authorities to trust for HTTPS, besides the
            public ones.
        verify: how ``fetch_mean`` verifies the aggregate (roster readers only) —
            ``"auto"`` (recompute it from the members' uploads, each checked against the digest
            its member signed, when they total at most 1 GiB; above, sample 128 spans),
            ``"always"`` (recompute; fail if it cannot), an ``int`` N ≥ 1 (sample N spans of
            2048 values with this machine's randomness, each member's span checked against the
            upload root it signed: catches one tampered span with probability N/#spans — a
            deterrent, not a proof) or ``"off"``. A mismatch, or an upload the aggregator does
            not serve, raises :class:`VerificationError`. Whatever this says, the aggregate
            must be the one the key managers recorded with the set.
        dp_epsilon, dp_delta: this site's privacy budget (``docs/differential-privacy.md``):
            :meth:`submit` refuses, with :class:`BudgetError`, a round whose charge would take
            the spend its journal records (every DP round it uploaded to, in any training) past
            ``dp_epsilon`` at ``dp_delta``, and — with a budget — any round without DP
            (:class:`PolicyError`). :meth:`ledger` shows the spend.
        require_dp: refuse rounds without differential privacy (:class:`PolicyError`).
        min_dp_colluders, min_dp_honest_shares: refuse DP rounds whose noise withstands fewer
            colluding members (``t_c``) or is sized for fewer honest shares (``m_h``).

    Raises:
        ConfigError: a bad URL, unreadable file, malformed committee file or key, a
            ``verify`` other than the above, or a budget with ``dp_epsilon ≤ 0`` or
            ``dp_delta`` outside ``(0, 1)`` (or one without the other).
    """

    def __init__(
        self,
        aggregator: str,
        *,
        token: Optional[str] = None,
        token_file: Optional[Union[str, os.PathLike]] = None,
        committee_file: Optional[Union[str, os.PathLike]] = None,
        client_id: Optional[str] = None,
        key_file: Optional[Union[str, os.PathLike]] = None,
        reader: bool = False,
        journal_file: Optional[Union[str, os.PathLike]] = None,
        min_contributors: int = 3,
        min_tolerated_colluding_nodes: int = 1,
        allow_single_key_manager: bool = False,
        retry_budget: float = 120.0,
        ca_file: Optional[Union[str, os.PathLike]] = None,
        verify: Union[str, int] = "auto",
        dp_epsilon: Optional[float] = None,
        dp_delta: Optional[float] = None,
        require_dp: bool = False,
        min_dp_colluders: int = 1,
        min_dp_honest_shares: int = 1,
    ) -> None:
        if token is not None and token_file is not None:
            raise ConfigError("give token or token_file, not both")
        token = token if token is not None else _read(token_file, "token_file")
        min_contributors = _whole(min_contributors, "min_contributors", low=2, error=ConfigError)
        min_tolerated_colluding_nodes = _whole(
            min_tolerated_colluding_nodes, "min_tolerated_colluding_nodes", low=0, error=ConfigError
        )
        if min_tolerated_colluding_nodes > 15:
            raise ConfigError(
                f"min_tolerated_colluding_nodes = {min_tolerated_colluding_nodes}: a committee has at most 16 "
                "nodes, so at most 15 can be tolerated"
            )
        if not isinstance(allow_single_key_manager, bool):
            raise ConfigError(f"allow_single_key_manager = {allow_single_key_manager!r}: must be True or False")
        if isinstance(retry_budget, bool) or not isinstance(retry_budget, numbers.Real):
            raise ConfigError(f"retry_budget = {retry_budget!r}: must be a number of seconds")
        self._dp_delta = dp_delta
        #: The journal file, if any (:meth:`submit` requires one).
        self.journal_file: Optional[str] = os.fspath(journal_file) if journal_file is not None else None
        self._native = _call(
            _native.NativeClient,
            aggregator,
            token=token.strip() if token else None,
            committee_toml=_read(committee_file, "committee_file"),
            client_id=client_id,
            key_pem=_read(key_file, "key_file"),
            reader=reader,
            journal=self.journal_file,
            min_contributors=min_contributors,
            min_tolerated_colluding_nodes=min_tolerated_colluding_nodes,
            allow_single_key_manager=allow_single_key_manager,
            retry_budget_secs=float(retry_budget),
            ca_pem=_read(ca_file, "ca_file"),
            verify=_verify_arg(verify),
            dp_epsilon=None if dp_epsilon is None else _number(dp_epsilon, "dp_epsilon", ConfigError),
            dp_delta=None if dp_delta is None else _number(dp_delta, "dp_delta", ConfigError),
            require_dp=_flag(require_dp, "require_dp"),
            min_dp_colluders=_u32(min_dp_colluders, "min_dp_colluders", low=1, error=ConfigError),
            min_dp_honest_shares=_u32(min_dp_honest_shares, "min_dp_honest_shares", low=1, error=ConfigError),
        )

    # -- rounds (operators) ---------------------------------------------------------------

    def create_round(
        self,
        round_id: str,
        *,
        clients: Sequence[str],
        like: Optional[Update] = None,
        dim: Optional[int] = None,
        min_clients: Optional[int] = None,
        max_clients: Optional[int] = None,
        deadline_in: int = 3600,
        weighting: str = "uniform",
        min_count: int = 1,
        max_count: Optional[int] = None,
        clip: float = 1.0,
        max_abs_error: Optional[float] = None,
        pass_integers: bool = False,
        dp: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Creates a round (admin token): the aggregator plans it and registers it with the key
        managers.

        Args:
            round_id: the round's id (``[A-Za-z0-9_.-]``, at most 64 characters).
            clients: the roster sites allowed to contribute.
            like: an update whose layout (tensor names, shapes, order) the round takes; or
            dim: a flat vector of this many values.
            min_clients, max_clients: contributions needed to publish / at which the round
                closes (default: all clients).
            deadline_in: seconds until the deadline, on the aggregator's clock.
            weighting: ``"uniform"``, or ``"samples"`` (FedAvg by each site's sample count,
                between ``min_count`` and ``max_count`` — required: a site with more samples
                cannot contribute —, encrypted with the values; the wider the range, the more
                bits per value).
            clip: values are clipped to ±clip; in a DP round, each update to L2 norm ``clip``.
            max_abs_error: the largest acceptable absolute error of a value of the mean
                (default 1e-6); in a DP round, the coarsest grid step (default: the planner's
                choice — the noise is the error).
            pass_integers: with ``like``, leave its integer tensors out of the round.
            dp: differential privacy of the mean (``docs/differential-privacy.md``), a dict:
                ``noise_multiplier`` — or ``epsilon`` with ``delta`` (default 1e-5) and
                ``rounds`` (default 1): the smallest noise with which that many rounds like
                this one cost each site at most ``epsilon`` —, ``colluders`` (``t_c``, default
                1) and ``honest_shares`` (``m_h``, default ``max_clients − colluders``). Each
                site adds a discrete-Gaussian share; key managers never record a set of fewer
                than ``m_h + t_c``. Weighting must be ``"uniform"``.

        Returns:
            The round as a dict (its ``spec`` holds the plan and the mask seed).

        Raises:
            RefusedError: with ``problem["field"]`` naming what is wrong (e.g. an infeasible
                ``max_abs_error``, with the nearest feasible setting in the detail).
        """
        if (like is None) == (dim is None):
            raise InputError("give exactly one of like= and dim=")
        layout = {"dimension": _whole(dim, "dim", low=1)} if dim is not None else _layout(like, pass_integers)
        if isinstance(clients, (str, bytes)) or not all(isinstance(c, str) for c in clients):
            raise InputError(f"clients = {clients!r}: must be a list of client id strings")
        n = len(clients)
        if weighting == "uniform":
            w: Any = "uniform"
        elif weighting == "samples":
            if max_count is None:
                raise InputError(
                    "max_count: required with weighting='samples' (the largest sample count a site "
                    "may declare; a site with more cannot contribute)"
                )
            w = {"samples": {"min_count": _whole(min_count, "min_count", low=1),
                             "max_count": _whole(max_count, "max_count", low=1)}}
        else:
            raise InputError(f"weighting {weighting!r}: use 'uniform' or 'samples'")
        if weighting == "uniform" and max_count is not None:
            raise InputError("max_count: applies to weighting='samples' only")
        max_n = _whole(max_clients if max_clients is not None else n, "max_clients")
        request = {
            "round_id": round_id,
            "layout": layout,
            "clients": list(clients),
            "min_clients": _whole(min_clients if min_clients is not None else n, "min_clients"),
            "max_clients": max_n,
            "deadline_in_secs": _whole(deadline_in, "deadline_in", low=1),
            "weighting": w,
            "clip_bound": _positive(clip, "clip"),
            "max_abs_error": _positive(max_abs_error if max_abs_error is not None else 1e-6, "max_abs_error"),
        }
        if dp is not None:
            if max_abs_error is None:
                request["max_abs_error"] = request["clip_bound"]
            request["dp"] = self._dp_options(dp, request, max_n)
        return json.loads(_call(self._native.create_round, json.dumps(request)))

    @staticmethod
    def _dp_options(dp: Mapping[str, Any], request: Dict[str, Any], max_n: int) -> Dict[str, Any]:
        if not isinstance(dp, Mapping):
            raise InputError(f"dp = {dp!r}: must be a dict (noise_multiplier or epsilon, colluders, honest_shares)")
        known = {"noise_multiplier", "epsilon", "delta", "rounds", "colluders", "honest_shares"}
        unknown = sorted(set(dp) - known)
        if unknown:
            raise InputError(f"dp: unknown key(s) {unknown}; known: {sorted(known)}")
        colluders = _u32(dp.get("colluders", 1), "dp['colluders']", low=1)
        honest = _u32(dp.get("honest_shares", max(max_n - colluders, 1)), "dp['honest_shares']", low=1)
        if ("noise_multiplier" in dp) == ("epsilon" in dp):
            raise InputError("dp: give exactly one of noise_multiplier and epsilon")
        if "noise_multiplier" in dp:
            if "delta" in dp or "rounds" in dp:
                raise InputError("dp: delta and rounds go with epsilon (they calibrate the noise), not with noise_multiplier")
            z = _positive(dp["noise_multiplier"], "dp['noise_multiplier']")
        else:
            delta = _positive(dp.get("delta", 1e-5), "dp['delta']")
            if delta >= 1:
                raise InputError(f"dp['delta'] = {delta!r}: must be in (0, 1)")
            layout = request["layout"]
            values = layout["dimension"] if "dimension" in layout else sum(
                int(np.prod(t["shape"], dtype=np.int64)) for t in layout["tensors"])
            z = _call(
                _native.calibrate_noise_multiplier, _u32(max_n, "max_clients", low=1), request["clip_bound"],
                request["max_abs_error"], values, honest, colluders,
                _positive(dp["epsilon"], "dp['epsilon']"), delta,
                _whole(dp.get("rounds", 1), "dp['rounds']", low=1),
            )
        return {"noise_multiplier": z, "honest_shares": honest, "colluders": colluders}

    def ledger(self, delta: Optional[float] = None) -> Dict[str, Any]:
        """This site's privacy ledger, from its journal: ``dp_rounds`` (DP rounds it uploaded
        to, in any training), ``epsilon_spent`` at ``delta`` (default: the budget's δ, else
        1e-5), ``delta``, and ``rdp_units`` (the summed charge at the accountant's orders, in
        2^-32 nats).

        Raises:
            ConfigError: no journal, or ``delta`` outside ``(0, 1)``."""
        if delta is None:
            delta = self._dp_delta if self._dp_delta is not None else 1e-5
        delta = _number(delta, "delta", ConfigError)
        if not 0 < delta < 1:
            raise ConfigError(f"delta = {delta!r}: must be in (0, 1)")
        return json.loads(_call(self._native.ledger, delta))

    def round(self, round_id: str) -> Dict[str, Any]:
        """The round: request, spec (plan, seed), state, uploads, key managers' echoes and,
        once published, the transcript (contributors and their upload digests)."""
        return json.loads(_call(self._native.round, round_id))

    def close_round(self, round_id: str) -> Dict[str, Any]:
        """Closes the round now (admin token) and starts publication."""
        return json.loads(_call(self._native.close_round, round_id))

    def wait_for_aggregate(self, round_id: str, timeout: float = 600.0) -> Dict[str, Any]:
        """Waits (GIL released) until the round is published, through server outages.

        Raises:
            RoundStateError: the round failed, or ``timeout`` seconds passed.
        """
        return json.loads(_call(self._native.wait_for_aggregate, round_id, float(timeout)))

    # -- sites ----------------------------------------------------------------------------

    def submit(
        self,
        round_id: str,
        update: Update,
        *,
        count: Optional[int] = None,
        pass_integers: bool = False,
        allow_resubmission: bool = False,
        experiment: Optional[str] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> Dict[str, Any]:
        """Encrypts ``update`` for the round and uploads it as this site, then deposits the
        shares of its key with the key managers (GIL released throughout).

        Args:
            round_id: the round (created by the operator; this site must be on its list).
            update: a 1-D array (flat round), or a dict of arrays with the round's tensor
                names and shapes (any order; float16, bfloat16 — ``ml_dtypes`` —, float32 or
                float64): numpy arrays, or PyTorch tensors on the CPU (a model's
                ``state_dict()``; a tensor on a GPU raises ``InputError``). Values are
                clipped to the round's bound (reported here, and to every reader of the mean).
            count: this site's sample count (``samples`` rounds; an integer within the
                round's ``min_count``..``max_count``).
            pass_integers: leave integer tensors out (else they raise ``InputError``).
            allow_resubmission: submit even if the journal says this update went to
                another round.
            experiment: the experiment this update belongs to, for the journal: a
                deterministic re-run under a new name is not refused as a resubmission (the
                journal's protection holds within one experiment).
            progress: called as ``progress(event, done, total)``.

        Returns:
            ``{"receipt": {...}, "bytes", "clipped", "largest_magnitude", "deposited_with", ...}``.

        Raises:
            InputError: the update does not fit the round (the message names the tensor).
            PolicyError: this client's policy refuses the round.
            AlreadySubmittedError: this update already went to this round.
            RefusedError, UnavailableError, RoundStateError, CommitteeError: see the classes.
        """
        if count is not None:
            count = _whole(count, "count", low=1)
        floats, _ = _tensors(update, pass_integers)
        if not floats:
            raise InputError("the update holds no floating-point tensor")
        # Any order: the native client takes named tensors in the round's order.
        receipt = _call(
            self._native.submit,
            round_id,
            floats,
            count=count,
            allow_resubmission=allow_resubmission,
            experiment=experiment,
            progress=progress,
        )
        return json.loads(receipt)

    def fetch_mean(
        self,
        round_id: str,
        *,
        like: Optional[Update] = None,
        dtype: Optional[Union[str, np.dtype]] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> Aggregate:
        """Downloads the aggregate and the key managers' releases for its contributor set,
        cross-checks them and decrypts the mean (GIL released). This site must be in the set,
        or a roster reader.

        Args:
            like: an update whose structure and dtypes the mean takes — numpy arrays, or
                PyTorch tensors (returned as tensors). Its integer tensors are copied through,
                or, if the round averaged them, rounded to the nearest integer. Else
            dtype: one dtype for every tensor (default float32).

        Returns:
            An :class:`Aggregate`; its ``max_abs_error`` holds for the mean as returned.

        Raises:
            InputError: ``like`` or ``dtype`` names a dtype a mean cannot be written in
                (checked before anything is downloaded), or ``like`` has another structure.
            RoundStateError: not published yet (``wait_for_aggregate`` first) or failed.
            CommitteeError: the releases do not verify or fewer than t key managers answered.
            VerificationError: the aggregate is not the sum of the uploads the members signed,
                or the mean has a value no genuine mean can have.
        """
        default = _float_dtype(dtype, "dtype") if dtype is not None else np.dtype(np.float32)
        dtypes: Dict[str, np.dtype] = {}
        ints: Dict[str, Any] = {}
        # Tensors of `like` that are PyTorch tensors come back as tensors of their dtype.
        torch_dtypes: Dict[str, Any] = {}
        if isinstance(like, Mapping):
            for name, a in like.items():
                if _is_torch(a):
                    torch_dtypes[name] = a.dtype
                    if not a.is_floating_point():
                        ints[name] = a
                        continue
                a = _numpy(a, f"like[{name!r}]")
                if a.dtype.kind in "iub":
                    ints[name] = a
                else:
                    dtypes[name] = _float_dtype(a.dtype, f"like[{name!r}]")
        elif like is not None:
            if _is_torch(like):
                torch_dtypes[""] = like.dtype
            default = _float_dtype(_numpy(like, "like").dtype, "like")
            like = _numpy(like, "like")
        info_json, flat = _call(self._native.fetch_mean, round_id, progress=progress)
        info = json.loads(info_json)
        layout = info["round"]["request"]["layout"]
        mean: Update
        written: List[str] = []
        if "dimension" in layout:
            if isinstance(like, Mapping):
                raise InputError(f"round {round_id} is a flat vector; `like` must be an array, not a dict")
            mean = flat.astype(default)
            written.append(np.dtype(default).name)
        else:
            out: Dict[str, Any] = {}
            at = 0
            for t in layout["tensors"]:
                shape = tuple(t["shape"])
                size = int(np.prod(shape)) if shape else 1
                values = flat[at : at + size].reshape(shape)
                at += size
                if t["name"] in ints:
                    # An integer tensor of `like` that the round averaged: rounded to the
                    # nearest integer, in its dtype (0.5 more error than the bound says).
                    a = ints.pop(t["name"])
                    dt = _numpy(a, f"like[{t['name']!r}]").dtype
                    out[t["name"]] = np.asarray(np.rint(values)).astype(dt)
                    continue
                dt = dtypes.get(t["name"], default)
                out[t["name"]] = values.astype(dt)
                written.append(np.dtype(dt).name)
            # Integer tensors of `like` the round left out are copied through (never over a
            # tensor the round averaged).
            for name, a in ints.items():
                if name not in out:
                    out[name] = a.clone() if _is_torch(a) else a.copy()
            if isinstance(like, Mapping):
                out = {n: out[n] for n in like if n in out} | {n: a for n, a in out.items() if n not in like}
            if isinstance(like, np.ndarray) and list(out) == ["array"]:
                out = {"": out["array"]}  # a multi-dimensional array round: the caller's array back
            mean = out
        if torch_dtypes:
            mean, narrowed = _to_torch(mean, torch_dtypes)
            written += narrowed
        if isinstance(mean, dict) and list(mean) == [""]:
            mean = mean[""]
        roundoff = max((_UNIT_ROUNDOFF[d] for d in written), default=0.0)
        c = info["clipping"]
        return Aggregate(
            mean=mean,
            contributors=info["contributors"],
            total_weight=info["total_weight"],
            max_abs_error=info["max_abs_error"] + info["largest"] * roundoff,
            clipping=Clipping(c["contributions"], c["values_at_least"], c["values_at_most"], c["of_values"]),
            nodes=info["nodes"],
            verified=info["verification"].get("recomputed_from_uploads"),
            sampled_spans=info["verification"].get("sampled_spans"),
            detection_probability=info["verification"].get("detection_probability"),
            not_verified=info["verification"].get("not_verified"),
            dp=info.get("dp"),
            info=info,
        )


def _to_torch(mean: Any, dtypes: Dict[str, Any]) -> Tuple[Any, List[str]]:
    """The arrays of `mean` named in `dtypes` (``""``: `mean` itself) as PyTorch tensors of
    those dtypes; also the names of the float types the values were narrowed to on the way."""
    import torch

    narrowed: List[str] = []

    def one(a: Any, dt: Any) -> Any:
        if _is_torch(a):
            return a
        if dt.is_floating_point and dt not in (torch.float32, torch.float64):
            narrowed.append("bfloat16" if dt == torch.bfloat16 else "float16")
        return torch.from_numpy(_c_contiguous(a)).to(dt)

    if isinstance(mean, dict):
        return {n: one(a, dtypes[n]) if n in dtypes else a for n, a in mean.items()}, narrowed
    return one(mean, dtypes[""]), narrowed


def _float_dtype(dtype: Any, argument: str) -> np.dtype:
    """One of the dtypes a mean can be written in, else ``InputError`` naming the argument."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise InputError(f"{argument} = {dtype!r} is not a dtype") from None
    if dt.name not in _FLOATS:
        raise InputError(f"{argument}: a mean is written as float16, bfloat16, float32 or float64, not {dt.name}")
    return dt
