"""Options of the keyframe database (ROS parameters ``database.*``) and its error type."""

from __future__ import annotations

import dataclasses

from salad_ros import params as cfgmod
from salad_ros.params import ConfigError, param

PREFIX = "database."


class DatabaseError(ValueError):
    """A database cannot be created, loaded or saved; the message says where and why."""


@dataclasses.dataclass
class DatabaseConfig:
    """Index options of the keyframe database (ROS parameters ``database.*``)."""

    index: str = param("flat", "Index type: flat (exact), hnsw (approximate graph, fast on large maps) "
                       "or ivfpq (compressed codes for very large maps)", choices=("flat", "hnsw", "ivfpq"))
    # On by default for the node: exact search is memory-bound, and half the bytes is what keeps a
    # 10k-keyframe search under 10 ms on a 2-core CPU; scores move by ~1e-3, far below any threshold.
    fp16: bool = param(True, "Store descriptors as float16 (scalar quantiser): half the memory and search time, "
                       "scores change by ~1e-3; false = exact fp32")
    use_gpu: str = param("auto", "Flat index on GPU 0: auto (when faiss reports a GPU), never, or "
                         "always (error without one)", choices=("auto", "never", "always"))
    hnsw_m: int = param(32, "HNSW links per node: more gives better recall and more memory", range=(4, 256))
    hnsw_ef_construction: int = param(80, "HNSW candidate list size while inserting", range=(8, 4096))
    hnsw_ef_search: int = param(128, "HNSW candidate list size while searching: recall vs latency",
                                range=(1, 16384))
    ivf_nlist: int = param(256, "IVF-PQ coarse clusters", range=(1, 1 << 20))
    ivf_pq_m: int = param(0, "IVF-PQ sub-quantisers = code bytes per keyframe; must divide the descriptor "
                          "dimension. 0 = auto: the largest divisor <= 128 leaving >= 4 dims each (8448-D: 128)",
                          range=(0, 65536))
    ivf_nprobe: int = param(16, "IVF-PQ clusters visited per search (at most ivf_nlist are)", range=(1, 1 << 20))
    ivf_train_at: int = param(20000, "Keyframe count at which IVF-PQ is trained (exact flat search "
                              "until then); faiss recommends >= 39 * max(ivf_nlist, 256)", range=(1, 1 << 40))

    def __post_init__(self) -> None:
        cfgmod.check_fields(self)

    def validate(self) -> None:
        """Cross-field rules; raises :class:`ConfigError` naming the parameter."""
        if self.use_gpu == "always" and self.index != "flat":
            raise ConfigError(f"parameter '{PREFIX}use_gpu': 'always' needs index 'flat' "
                              f"(faiss-gpu has no {self.index} index here), got index '{self.index}'")
        need = max(self.ivf_nlist, 256)  # k-means needs at least as many points as centroids
        if self.index == "ivfpq" and self.ivf_train_at < need:
            raise ConfigError(f"parameter '{PREFIX}ivf_train_at': {self.ivf_train_at} is below "
                              f"{need}, the number of IVF / PQ centroids to train")
