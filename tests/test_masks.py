"""The mask vocabulary, pinned by hand for small N."""

from collections import Counter

import pytest
import torch

from pwl.errors import ConfigError, MaskError
from pwl.masks import (
    ORDERS,
    LoadingOrder,
    adapter_between,
    adapters_used,
    bytes_loaded,
    first_switch,
    is_mask,
    masks_for_order,
    order_key,
    parse_orders,
    parts_needed,
    prefix_masks,
    random_mixed_mask,
    suffix_masks,
    teacher_blocks,
    validate_mask,
)


def test_validate_mask_names_what_is_wrong():
    assert validate_mask("TSTS", 4) == "TSTS"
    with pytest.raises(MaskError, match="must be a string"):
        validate_mask(["T", "S"], 2)
    with pytest.raises(MaskError, match=r"letters \['X', 't'\]"):
        validate_mask("tSX", 3)
    with pytest.raises(MaskError, match="length 3 but the model has N=4"):
        validate_mask("TSS", 4)
    assert is_mask("TS") and is_mask("SSSSS")
    assert not is_mask("") and not is_mask("prefix") and not is_mask(3)


def test_k_and_the_order_of_masks():
    assert [teacher_blocks(m) for m in ("SSS", "TST", "TTT")] == [0, 2, 3]
    assert sorted(["STT", "SST", "TSS", "TTT", "STS", "SSS"], key=order_key) == \
        ["SSS", "TSS", "STS", "SST", "STT", "TTT"]


def test_named_orders_for_three_blocks():
    assert masks_for_order("prefix", 3) == ["SSS", "TSS", "TTS", "TTT"]
    assert masks_for_order("suffix", 3) == ["SSS", "SST", "STT", "TTT"]
    assert masks_for_order("window", 3) == ["SSS", "TSS", "STS", "SST", "TTS", "STT", "TTT"]
    assert masks_for_order("all", 3) == ["SSS", "TSS", "STS", "SST", "TTS", "TST", "STT",
                                         "TTT"]
    assert prefix_masks(4) == ["TSSS", "TTSS", "TTTS"]
    assert suffix_masks(4) == ["SSST", "SSTT", "STTT"]
    with pytest.raises(MaskError, match="'middle' is unknown"):
        masks_for_order("middle", 3)


def test_parse_gives_one_form_and_names_orders_by_what_they_are():
    prefix = LoadingOrder("prefix", ("SSS", "TSS", "TTS", "TTT"))
    assert LoadingOrder.parse("prefix", 3) == prefix
    assert LoadingOrder.parse([0, 1, 2], 3) == prefix
    assert LoadingOrder.parse(["TSS", "TTS", "TTT"], 3) == prefix
    assert LoadingOrder.parse(prefix, 3) is prefix
    assert LoadingOrder.parse([2, 1, 0], 3) == LoadingOrder("suffix", ("SSS", "SST", "STT",
                                                                        "TTT"))
    assert LoadingOrder.parse([2, 0], 3) == LoadingOrder("custom", ("SSS", "SST", "TST"))
    assert LoadingOrder.parse(["SSS", "STS", "STT", "TTT"], 3) == \
        LoadingOrder("custom", ("SSS", "STS", "STT", "TTT"))
    assert LoadingOrder.parse("plan", 3, plan=["TSS", "TTS", "TTT"]) == \
        LoadingOrder("plan", ("SSS", "TSS", "TTS", "TTT"))
    assert LoadingOrder.parse("window", 2) == LoadingOrder("window", ("SS", "TS", "ST", "TT"))
    assert LoadingOrder.parse("all", 2) == LoadingOrder("all", ("SS", "TS", "ST", "TT"))
    assert set(ORDERS) == {"prefix", "suffix", "window", "all", "plan", "custom"}


@pytest.mark.parametrize("value,error", [
    ("middle", "'middle' is unknown"),
    ("plan", "needs a loading plan"),
    ([0, 0], r"distinct blocks in \[0, 2\]"),
    ([3], r"distinct blocks in \[0, 2\]"),
    ([True, False], "neither a name"),
    ([0, "TSS"], "neither a name"),
    ([], "neither a name"),
    (["TSS", "STT"], "exactly one teacher block per step"),
    (["TTS"], "exactly one teacher block per step"),
    (["TSS", "SSS"], "exactly one teacher block per step"),
    (["TS"], "length 2 but the model has N=3"),
    (LoadingOrder("prefix", ("SS", "TS", "TT")), "length 2 but the model has N=3"),
])
def test_parse_rejects_what_is_no_order_of_n(value, error):
    with pytest.raises(MaskError, match=error):
        LoadingOrder.parse(value, 3)


def test_blocks_added_per_step():
    assert LoadingOrder.parse("prefix", 4).blocks == [0, 1, 2, 3]
    assert LoadingOrder.parse("suffix", 4).blocks == [3, 2, 1, 0]
    assert LoadingOrder.parse(["STSS", "STST"], 4).blocks == [1, 3]
    assert LoadingOrder.parse([2, 0, 3, 1], 4).masks == ("SSSS", "SSTS", "TSTS", "TSTT",
                                                         "TTTT")
    with pytest.raises(MaskError, match="window cannot be loaded block by block"):
        _ = LoadingOrder.parse("window", 3).blocks


def test_parse_orders_gathers_loose_masks_into_one_custom_order():
    orders = parse_orders(["prefix", "TSTS", "TTSS", "TSTS"], 4)
    assert orders == [LoadingOrder("prefix", ("SSSS", "TSSS", "TTSS", "TTTS", "TTTT")),
                      LoadingOrder("custom", ("TSTS", "TTSS"))]
    assert parse_orders(["TSTS", "suffix", "STST"], 4) == [
        LoadingOrder("custom", ("TSTS", "STST")),
        LoadingOrder("suffix", ("SSSS", "SSST", "SSTT", "STTT", "TTTT"))]
    assert parse_orders("all", 2) == [LoadingOrder("all", ("SS", "TS", "ST", "TT"))]
    assert parse_orders([[2, 0]], 3) == [LoadingOrder("custom", ("SSS", "SST", "TST"))]
    with pytest.raises(MaskError, match="'prefx' is neither a loading order"):
        parse_orders(["prefx"], 4)
    with pytest.raises(MaskError, match="length 3"):
        parse_orders(["TTS"], 4)
    with pytest.raises(ConfigError, match="orders is empty"):
        parse_orders([], 4)


def test_adapters_sit_where_the_network_switches():
    assert adapter_between(None, "T") is None
    assert adapter_between("S", "T") == "to_teacher"
    assert adapter_between("T", "S") == "to_student"
    assert adapter_between("T", "T") is None
    assert [first_switch(m) for m in ("TTSS", "STTT", "SSSS", "TTTT")] == [2, 1, None, None]
    assert adapters_used("TSTS") == {("to_student", 0), ("to_teacher", 1), ("to_student", 2)}
    assert adapters_used("TTSS") == {("to_student", 1)}
    assert adapters_used("SSTT") == {("to_teacher", 1)}
    assert adapters_used("SSSS") == set() == adapters_used("TTTT")


def test_parts_needed_by_a_set_of_masks():
    assert parts_needed(["TSSS", "TTSS"]) == ({0, 1}, {1, 2, 3},
                                              {("to_student", 0), ("to_student", 1)})
    assert parts_needed(["TTTT"]) == ({0, 1, 2, 3}, set(), set())
    assert parts_needed(["SSTS"]) == ({2}, {0, 1, 3}, {("to_teacher", 1), ("to_student", 2)})


def test_bytes_loaded_counts_the_teacher_blocks_of_the_mask():
    sizes = [10, 20, 30, 40]
    assert [bytes_loaded(m, sizes) for m in ("SSSS", "TSSS", "TSTS", "STTT", "TTTT")] == \
        [0, 10, 40, 90, 100]
    with pytest.raises(ValueError):
        bytes_loaded("TSS", sizes)


def test_random_mixed_masks_are_never_pure_and_reach_every_mixed_mask():
    torch.manual_seed(0)
    drawn = Counter(random_mixed_mask(4) for _ in range(600))
    mixed = {m for m in masks_for_order("all", 4) if m not in ("SSSS", "TTTT")}
    assert set(drawn) == mixed
    # Half the draws come from the six single-switch masks, so each of those is drawn
    # more often than any mask with two or more switches.
    single = {"TSSS", "TTSS", "TTTS", "SSST", "SSTT", "STTT"}
    assert min(drawn[m] for m in single) > max(drawn[m] for m in mixed - single)
    assert {random_mixed_mask(2) for _ in range(50)} == {"TS", "ST"}
