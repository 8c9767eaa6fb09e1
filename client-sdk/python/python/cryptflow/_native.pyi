"""Type stubs of the native module (see ``cryptflow`` for the documented interface)."""

from typing import Callable, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

VERSION: str

class NativeError(Exception):
    """args: (kind, message, problem JSON or None)."""

class NativeClient:
    def __init__(
        self,
        aggregator: str,
        *,
        token: Optional[str] = ...,
        committee_toml: Optional[str] = ...,
        client_id: Optional[str] = ...,
        key_pem: Optional[str] = ...,
        reader: bool = ...,
        journal: Optional[str] = ...,
        min_contributors: int = ...,
        min_tolerated_colluding_nodes: int = ...,
        allow_single_key_manager: bool = ...,
        retry_budget_secs: float = ...,
        ca_pem: Optional[str] = ...,
        verify: str = ...,  # "auto", "always", "off" or "spans:N"
    ) -> None: ...
    def create_round(self, request: str) -> str: ...
    def round(self, round: str) -> str: ...
    def close_round(self, round: str) -> str: ...
    def wait_for_aggregate(self, round: str, timeout_secs: float) -> str: ...
    def submit(
        self,
        round: str,
        tensors: List[Tuple[str, npt.NDArray[np.floating]]],
        count: Optional[int] = ...,
        allow_resubmission: bool = ...,
        experiment: Optional[str] = ...,
        progress: Optional[Callable[[str, int, int], None]] = ...,
    ) -> str: ...
    def fetch_mean(
        self, round: str, progress: Optional[Callable[[str, int, int], None]] = ...
    ) -> Tuple[str, npt.NDArray[np.float64]]: ...

def largest_clip_bound(
    max_clients: int, max_abs_error: float, min_count: Optional[int] = ..., max_count: Optional[int] = ...
) -> Optional[float]: ...
