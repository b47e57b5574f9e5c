"""Calibration and QAT across 2 processes (gloo on localhost) equal one process on the union.

One spawn runs every scenario (starting torch twice costs more than the scenarios),
each rank saves what it converted, and the tests compare the ranks with each other
and with a single process calibrating on the whole dataset.
"""

from __future__ import annotations

import datetime
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from observers import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    ObserverStateError,
    PercentileObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from pt2e import calibrate, convert_pt2e, prepare_pt2e, prepare_qat_pt2e, sync_observers
from pt2e.distributed import merge_rule_for
from pt2e.errors import UnsupportedOperationError
from tests.support.models import MLP
from tests.support.reference_quantizer import ReferenceQuantizer

WORLD = 2
BATCH = 16
SAMPLES = 128  # 4 batches per rank
SPAWN_TIMEOUT_S = 240
# The stated tolerance for merged histograms (docs/distributed.md): converted scales
# within 2% of the single-process ones, zero points within 2.
HISTOGRAM_SCALE_RTOL = 0.02
HISTOGRAM_ZERO_POINT_ATOL = 2

QDQ = torch.ops.quantized_decomposed
OBSERVERS = {"minmax": MinMaxObserver, "histogram": HistogramObserver}


def _dataset() -> TensorDataset:
    """Odd samples are 3x wider: DistributedSampler gives them all to rank 1, so the ranks differ."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 16, generator=g)
    x[1::2] *= 3
    return TensorDataset(x)


def _prepared(observer: Any) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    example = (torch.randn(BATCH, 16),)
    gm = torch.export.export(MLP().eval(), example).module()
    return prepare_pt2e(gm, ReferenceQuantizer(observer=observer))


def _fingerprint(converted: torch.fx.GraphModule) -> dict[str, Any]:
    """Everything the converted model computes with: q/dq arguments and constants."""
    ops = []
    for node in converted.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "namespace", "") == "quantized_decomposed":
            ops.append((node.name, str(node.target),
                        [a for a in node.args if not isinstance(a, torch.fx.Node)]))
    state = {k: v.clone() for k, v in converted.state_dict().items()}
    return {"ops": ops, "state": state, "code": converted.code}


def _calibrated(observer: Any, loader: DataLoader) -> dict[str, Any]:
    prepared = _prepared(observer)
    calibrate(prepared, loader, progress=False)
    return _fingerprint(convert_pt2e(prepared))


def _fake_quant_scales(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.scale.clone() for name, m in model.named_modules()
            if type(m).__name__ == "FakeQuantize"}


def _qat(rank: int, broadcast_buffers: bool) -> dict[str, Any]:
    """3 DDP steps on rank-specific data, sync, convert."""
    torch.manual_seed(0)
    example = (torch.randn(BATCH, 16),)
    gm = torch.export.export(MLP().train(), example).module()
    prepared = prepare_qat_pt2e(gm, ReferenceQuantizer(is_qat=True))
    ddp = DistributedDataParallel(prepared, broadcast_buffers=broadcast_buffers)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(10 + rank)
    for _ in range(3):
        loss = ddp(torch.randn(BATCH, 16, generator=g) * (1 + 2 * rank)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    before = _fake_quant_scales(prepared)
    merged = sync_observers(ddp)
    return {"before": before, "after": _fake_quant_scales(prepared), "merged": merged,
            "weights": [p.detach().clone() for p in prepared.parameters()],
            "converted": _fingerprint(convert_pt2e(prepared))}


def _moving_average(rank: int) -> dict[str, Any]:
    """A standalone moving average fed each rank's batches, merged; plus every batch's max."""
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(64, generator=g) * (1 + i % 3) for i in range(8)]
    obs = MovingAverageMinMaxObserver(averaging_constant=0.3)
    for x in batches[rank::WORLD]:
        obs(x)
    sync_observers(torch.nn.ModuleDict({"obs": obs}))
    return {"merged_max": obs.max_val.clone(), "batches": batches}


def _per_channel_with_an_idle_rank(rank: int) -> torch.Tensor:
    obs = PerChannelMinMaxObserver(ch_axis=1)
    if rank == 0:
        obs(torch.tensor([[1.0, -2.0, 3.0]]))
    sync_observers(torch.nn.ModuleDict({"obs": obs}))
    return torch.stack([obs.min_val, obs.max_val])


def _histogram_merged_twice(rank: int) -> list[float]:
    """Merging an unchanged histogram again is skipped; observing more, then merging, sums."""
    obs = HistogramObserver(bins=64)
    obs(torch.randn(100) * (1 + rank))
    model = torch.nn.ModuleDict({"obs": obs})
    counts = []
    for _ in range(2):
        sync_observers(model)
        counts.append(float(obs.histogram.sum()))
    return counts


def _nothing_observed(rank: int) -> int:
    """Observers that saw no data anywhere merge to 'no data' (convert then says so)."""
    model = torch.nn.ModuleDict({"a": PerChannelMinMaxObserver(), "b": HistogramObserver(),
                                 "c": MovingAverageMinMaxObserver(), "d": MinMaxObserver()})
    merged = sync_observers(model)
    assert model["a"].min_val.numel() == 0 and torch.isinf(model["b"].min_val)
    return merged


def _mismatch(rank: int) -> str:
    obs = MinMaxObserver() if rank == 0 else HistogramObserver()
    obs(torch.randn(8))
    try:
        sync_observers(torch.nn.ModuleDict({"obs": obs}))
    except ObserverStateError as err:
        return str(err)
    return ""


def _docs_example() -> dict[str, Any]:
    """Run docs/distributed.md's example (its first python block) on this rank."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(re.findall(r"```python\n(.*?)```", text, flags=re.S)[0], namespace)
    return _fingerprint(namespace["calibrate_on_this_rank"]())


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        dataset = _dataset()
        results: dict[str, Any] = {}
        for kind, observer in OBSERVERS.items():
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
            results[kind] = _calibrated(observer, DataLoader(dataset, batch_size=BATCH,
                                                             sampler=sampler))
        for broadcast_buffers in (True, False):
            results[f"qat-broadcast_buffers={broadcast_buffers}"] = _qat(rank, broadcast_buffers)
        results["moving_average"] = _moving_average(rank)
        results["per_channel"] = _per_channel_with_an_idle_rank(rank)
        results["mismatch"] = _mismatch(rank)
        results["docs_example"] = _docs_example()
        results["histogram_twice"] = _histogram_merged_twice(rank)
        results["nothing_observed"] = _nothing_observed(rank)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ranks")
    context = mp.start_processes(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=SPAWN_TIMEOUT_S)
    while not context.join(timeout=5):
        if datetime.datetime.now() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} ranks did not finish within {SPAWN_TIMEOUT_S} s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _single_process(observer: Any) -> dict[str, Any]:
    return _calibrated(observer, DataLoader(_dataset(), batch_size=BATCH))


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["ops"] == b["ops"]
    assert a["code"] == b["code"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key


@pytest.mark.slow
def test_min_max_ranks_convert_to_the_single_process_model(ranks) -> None:
    single = _single_process(MinMaxObserver)
    for rank in ranks:
        _assert_same(rank["minmax"], single)


@pytest.mark.slow
def test_ranks_differ_before_merging_so_the_merge_matters(ranks) -> None:
    """Rank 1's data is wider: without merging, rank 0 would have converted another model."""
    rank0_alone = _calibrated(MinMaxObserver, DataLoader(torch.utils.data.Subset(
        _dataset(), range(0, SAMPLES, 2)), batch_size=BATCH))
    assert rank0_alone["ops"] != ranks[0]["minmax"]["ops"]


@pytest.mark.slow
def test_histogram_ranks_agree_and_match_single_process_within_tolerance(ranks) -> None:
    _assert_same(ranks[0]["histogram"], ranks[1]["histogram"])
    single = _single_process(HistogramObserver)
    merged = ranks[0]["histogram"]
    assert [name for name, _, _ in merged["ops"]] == [name for name, _, _ in single["ops"]]
    for (name, target, ours), (_, _, theirs) in zip(merged["ops"], single["ops"]):
        if "per_tensor" not in target:
            continue
        assert ours[0] == pytest.approx(theirs[0], rel=HISTOGRAM_SCALE_RTOL), name
        assert abs(ours[1] - theirs[1]) <= HISTOGRAM_ZERO_POINT_ATOL, name


@pytest.mark.slow
@pytest.mark.parametrize("broadcast_buffers", [True, False],
                         ids=["broadcast_buffers", "no-broadcast_buffers"])
def test_ddp_qat_qparams_agree_across_ranks_at_convert(ranks, broadcast_buffers: bool) -> None:
    first, second = (rank[f"qat-broadcast_buffers={broadcast_buffers}"] for rank in ranks)
    assert first["merged"] == second["merged"] > 0
    for a, b in zip(first["weights"], second["weights"]):
        assert torch.equal(a, b)  # DDP kept the weights in sync
    # With broadcast_buffers DDP copies rank 0's buffers before each forward, but each
    # rank's last batch still moved its own activation observers; without it the ranks
    # follow their own data. Either way, without the merge the ranks disagree.
    assert any(not torch.equal(first["before"][k], second["before"][k]) for k in first["before"])
    for key in first["after"]:
        assert torch.equal(first["after"][key], second["after"][key]), key
    _assert_same(first["converted"], second["converted"])


@pytest.mark.slow
def test_moving_average_merge_stays_within_the_stated_bound(ranks) -> None:
    merged = [rank["moving_average"]["merged_max"] for rank in ranks]
    assert torch.equal(merged[0], merged[1])
    batches = ranks[0]["moving_average"]["batches"]
    single = MovingAverageMinMaxObserver(averaging_constant=0.3)
    for x in batches:
        single(x)
    maxima = torch.stack([x.max() for x in batches])
    bound = float(maxima.max() - maxima.min())
    assert abs(float(merged[0] - single.max_val)) <= bound
    assert float(maxima.min()) <= float(merged[0]) <= float(maxima.max())


@pytest.mark.slow
def test_per_channel_rank_without_data_takes_the_others_range(ranks) -> None:
    expected = torch.tensor([[1.0, -2.0, 3.0], [1.0, -2.0, 3.0]])
    for rank in ranks:
        assert torch.equal(rank["per_channel"], expected)


@pytest.mark.slow
def test_ranks_with_different_observers_get_a_clear_error(ranks) -> None:
    for rank in ranks:
        assert "the ranks hold different observers" in rank["mismatch"]
        assert "MinMaxObserver" in rank["mismatch"] and "HistogramObserver" in rank["mismatch"]


@pytest.mark.slow
def test_the_documented_example_converts_the_same_model_on_every_rank(ranks) -> None:
    _assert_same(ranks[0]["docs_example"], ranks[1]["docs_example"])
    assert ranks[0]["docs_example"]["ops"], "the example converted nothing"


@pytest.mark.slow
def test_merging_an_unchanged_histogram_again_is_skipped(ranks) -> None:
    for rank in ranks:
        assert rank["histogram_twice"] == [200.0, 200.0]  # 100 values on each of 2 ranks


@pytest.mark.slow
def test_observers_that_saw_nothing_merge_without_error(ranks) -> None:
    assert [rank["nothing_observed"] for rank in ranks] == [4, 4]


# ---- without a process group (fast) ------------------------------------------------------------


def test_sync_without_a_process_group_does_nothing() -> None:
    obs = MinMaxObserver()
    obs(torch.tensor([1.0, 2.0]))
    assert sync_observers(torch.nn.ModuleDict({"obs": obs})) == 0
    assert (obs.min_val.item(), obs.max_val.item()) == (1.0, 2.0)


@pytest.mark.parametrize(
    "observer, rule",
    [
        pytest.param(MinMaxObserver(), "merge_min_max_", id="minmax"),
        pytest.param(PerChannelMinMaxObserver(), "merge_min_max_", id="per-channel"),
        pytest.param(MovingAverageMinMaxObserver(), "merge_moving_average_", id="moving-average"),
        pytest.param(HistogramObserver(), "merge_histogram_", id="histogram"),
        pytest.param(PercentileObserver(), "merge_histogram_", id="percentile"),
        pytest.param(MSEObserver(), "merge_histogram_", id="mse"),
        pytest.param(FakeQuantize(), "merge_fake_quantize_", id="fake-quantize"),
        pytest.param(FusedMovingAvgObsFakeQuantize(), "merge_fake_quantize_", id="fused"),
        pytest.param(PlaceholderObserver(), "merge_nothing_", id="placeholder"),
    ],
)
def test_each_observer_kind_finds_its_rule_through_the_mro(observer, rule: str) -> None:
    assert merge_rule_for(observer).__name__ == rule


def test_an_observer_without_a_rule_is_refused_by_name() -> None:
    class Custom(torch.nn.Module):
        dtype = torch.uint8

        def calculate_qparams(self):
            return torch.tensor([1.0]), torch.tensor([0])

    with pytest.raises(UnsupportedOperationError, match=r"no observer merge rule for Custom.*register_merge_rule"):
        merge_rule_for(Custom())
