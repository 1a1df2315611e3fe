"""Prices and size rules of the model contracts, checked against the upstreams' published per-image prices."""

import math
from dataclasses import replace

import pytest

from imagegate.catalog.contracts import FreeFormSizes, free_form_problem, parse_size, price_per_image
from imagegate.catalog.loader import load_catalog
from imagegate.config import Settings
from imagegate.providers import bedrock, gemini

from .conftest import LOCAL_PRICE

PACKAGED = load_catalog(Settings()).contracts
GEMINI_SIZES = tuple(s for s in PACKAGED["gemini-3.1-flash-image"].sizes if s != "auto")
STABILITY_SIZES = tuple(s for s in PACKAGED["stability.stable-image-core-v1:1"].sizes if s != "auto")


@pytest.mark.parametrize(
    ("size", "micros"), [("256x256", 16_000), ("512x512", 18_000), ("1024x1024", 20_000)]
)
def test_dall_e_2_prices(catalog, size, micros):
    assert price_per_image(catalog["dall-e-2"], "standard", size) == micros


@pytest.mark.parametrize(
    ("quality", "size", "micros"),
    [
        ("standard", "1024x1024", 40_000),
        ("standard", "1792x1024", 80_000),
        ("standard", "1024x1792", 80_000),
        ("hd", "1024x1024", 80_000),
        ("hd", "1792x1024", 120_000),
        ("hd", "1024x1792", 120_000),
    ],
)
def test_dall_e_3_prices(catalog, quality, size, micros):
    assert price_per_image(catalog["dall-e-3"], quality, size) == micros


@pytest.mark.parametrize("model", ["gpt-image-1.5", "chatgpt-image-latest"])
@pytest.mark.parametrize(
    ("quality", "square", "non_square"),
    [("low", 9_000, 13_000), ("medium", 34_000, 50_000), ("high", 133_000, 200_000)],
)
def test_gpt_image_1_5_table(catalog, model, quality, square, non_square):
    contract = catalog[model]
    assert price_per_image(contract, quality, "1024x1024") == square
    assert price_per_image(contract, quality, "1536x1024") == non_square
    assert price_per_image(contract, quality, "1024x1536") == non_square


@pytest.mark.parametrize(
    ("model", "quality", "square", "non_square"),
    [
        ("gpt-image-1", "low", 11_000, 16_000),
        ("gpt-image-1", "medium", 42_000, 63_000),
        ("gpt-image-1", "high", 167_000, 250_000),
        ("gpt-image-1-mini", "low", 5_000, 6_000),
        ("gpt-image-1-mini", "medium", 11_000, 15_000),
        ("gpt-image-1-mini", "high", 36_000, 52_000),
    ],
)
def test_gpt_image_1_and_mini_tables(catalog, model, quality, square, non_square):
    contract = catalog[model]
    assert price_per_image(contract, quality, "1024x1024") == square
    assert price_per_image(contract, quality, "1536x1024") == non_square
    assert price_per_image(contract, quality, "1024x1536") == non_square


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-2-2026-04-21"])
@pytest.mark.parametrize(("quality", "micros"), [("low", 6_000), ("medium", 53_000), ("high", 211_000)])
def test_gpt_image_2_square_prices(catalog, model, quality, micros):
    assert price_per_image(catalog[model], quality, "1024x1024") == micros


@pytest.mark.parametrize(
    ("quality", "micros"),
    [
        # gpt-image-2's published 1024x1024 rates (docs/money.md: 0.006 / 0.053 / 0.211 USD) scaled by
        # 1536*864 / 1024**2 = 1.265625 give 7593.75, 67078.125 and 267046.875 micro-USD: rounded up.
        ("low", 7_594),
        ("medium", 67_079),
        ("high", 267_047),
    ],
)
def test_free_form_area_price_rounds_up(catalog, quality, micros):
    assert price_per_image(catalog["gpt-image-2"], quality, "1536x864") == micros


def test_free_form_price_of_a_whole_multiple_is_exact(catalog):
    # 2048x1024 is exactly twice the 1024x1024 area: no rounding to hide behind.
    assert price_per_image(catalog["gpt-image-2"], "medium", "2048x1024") == 106_000


@pytest.mark.parametrize(
    ("model", "sizes", "micros"),
    [
        # Per image: the 1K image's output tokens plus the most a 4,000-character prompt and 4 input images
        # can add upstream (catalog.json shows the sums): one price at every 1K size.
        ("gemini-3.1-flash-image", GEMINI_SIZES, 71_440),
        ("gemini-3-pro-image", GEMINI_SIZES, 176_880),
        ("gemini-3.1-flash-lite-image", GEMINI_SIZES, 71_440),
        ("stability.stable-image-core-v1:1", STABILITY_SIZES, 40_000),
    ],
)
def test_gemini_and_bedrock_models_sell_at_their_own_upstream_price(catalog, model, sizes, micros):
    contract = catalog[model]
    assert contract.sizes == (*sizes, "auto")
    assert contract.qualities == ("standard", "auto")
    assert [price_per_image(contract, "standard", size) for size in sizes] == [micros] * len(sizes)


def test_gemini_sizes_are_one_native_1k_size_per_gemini_aspect_ratio():
    ratios = [gemini.aspect_ratio(*parse_size(size)) for size in GEMINI_SIZES]
    assert sorted(ratios) == sorted(gemini.ASPECT_RATIOS)
    # The provider asks for 2K above a 1600-pixel edge; every contract size stays a (cheaper) 1K image.
    assert max(max(parse_size(size)) for size in GEMINI_SIZES) <= 1600
    assert all(w * h == pytest.approx(1024 * 1024, rel=0.03) for w, h in map(parse_size, GEMINI_SIZES))


def test_stability_sizes_are_one_size_per_stable_image_core_aspect_ratio():
    def nearest(width, height):
        return min(
            bedrock.STABILITY_RATIOS,
            key=lambda r: abs(math.log(width * int(r.split(":")[1]) / (height * int(r.split(":")[0])))),
        )

    assert sorted(nearest(*parse_size(size)) for size in STABILITY_SIZES) == sorted(bedrock.STABILITY_RATIOS)


def test_local_model_default_price(catalog):
    assert price_per_image(catalog["imagegate-local"], "medium", "1024x1024") == LOCAL_PRICE


@pytest.mark.parametrize("size", ["256x256", "1536x1024", "1536x864"])
def test_local_model_price_is_flat_per_image(catalog, size):
    # docs/money.md: IMAGEGATE_LOCAL_PRICE_USD is the "price per image" of imagegate-local, at any size
    # (scaled by area it would be 125 at 256x256, 3000 at 1536x1024, 2532 at 1536x864).
    assert price_per_image(catalog["imagegate-local"], "low", size) == LOCAL_PRICE


def test_a_contract_without_prices_has_no_price():
    # Contracts get their prices from the price book, through the catalog's loader.
    with pytest.raises(ValueError, match="priced by the catalog loader"):
        price_per_image(replace(PACKAGED["dall-e-2"], pricing=None), "standard", "1024x1024")


def test_catalog_contracts_carry_their_price_book_entry(catalog):
    # An alias carries its model's contract, prices included.
    assert all(contract.pricing.model == contract.id for contract in catalog.values())
    assert all(
        contract.pricing.model == model_id
        for model_id, contract in catalog.items()
        if model_id == contract.id
    )


GPT_IMAGE_2 = FreeFormSizes()


@pytest.mark.parametrize(
    ("width", "height"),
    [(1536, 864), (1024, 1024), (3840, 2160), (2160, 3840), (2400, 800), (800, 2400), (1024, 640)],
)
def test_free_form_allows(width, height):
    assert free_form_problem(GPT_IMAGE_2, width, height) is None


@pytest.mark.parametrize(
    ("width", "height", "rule"),
    [
        (1000, 1024, "multiples of 16"),
        (1024, 1030, "multiples of 16"),
        (3856, 1024, "longest edge must be at most 3840"),
        (1024, 3856, "longest edge must be at most 3840"),
        (800, 800, "total pixel count must be between 655360 and 8294400"),
        (3840, 2176, "total pixel count must be between 655360 and 8294400"),
        (2448, 800, "aspect ratio must be between 1:3 and 3:1"),
        (800, 2448, "aspect ratio must be between 1:3 and 3:1"),
    ],
)
def test_free_form_rejects_with_the_rule_broken(width, height, rule):
    problem = free_form_problem(GPT_IMAGE_2, width, height)
    assert problem is not None
    assert rule in problem


def test_free_form_pixel_bounds_are_inclusive():
    bounds = FreeFormSizes(min_pixels=1024 * 640, max_pixels=2048 * 1024)
    assert free_form_problem(bounds, 1024, 640) is None
    assert free_form_problem(bounds, 2048, 1024) is None
    assert "pixel count" in free_form_problem(bounds, 1024, 624)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1536x1024", (1536, 1024)),
        ("1x1", (1, 1)),
        ("0x1024", None),
        ("1024x0", None),
        ("1024", None),
        ("1024x", None),
        ("x1024", None),
        ("1024X1024", None),
        ("1024*1024", None),
        ("-16x16", None),
        ("16x-16", None),
        ("1024x1024x3", None),
        (" 1024x1024", None),
        ("1.5x2", None),
        ("auto", None),
        ("", None),
    ],
)
def test_parse_size(text, parsed):
    assert parse_size(text) == parsed
