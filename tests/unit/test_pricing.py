"""The price book: packaged prices, overrides, markups, reservations and charges, to the micro-dollar."""

import json
from dataclasses import replace

import pytest

from imagegate.catalog.contracts import price_per_image
from imagegate.catalog.loader import PACKAGED_PATH, load_catalog, load_prices
from imagegate.catalog.prices import input_image_tokens
from imagegate.config import Settings
from imagegate.errors import APIError
from imagegate.inputs.validation import ImageParams, resolve

from .conftest import LOCAL_PRICE, upload

PACKAGED = load_prices(Settings(local_price_micros=LOCAL_PRICE))
CONTRACTS = [c for c in load_catalog(Settings()).contracts.values()]


def build_catalog(prices):
    """The packaged contracts with `prices` attached."""
    return {c.id: replace(c, pricing=prices.model(c.id)) for c in CONTRACTS}


def book(overrides=None, **settings):
    return load_prices(Settings(prices=json.dumps(overrides) if overrides else "", **settings))


def make_job(prices, endpoint="generations", images=(), mask=None, **params):
    catalog = build_catalog(prices)
    return resolve(endpoint, ImageParams(**params), catalog, list(images), mask)


def usage(text=0, image=0, output=0, output_text=0):
    return {
        "input_tokens": text + image,
        "output_tokens": output + output_text,
        "total_tokens": text + image + output + output_text,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        "output_tokens_details": {"image_tokens": output, "text_tokens": output_text},
    }


# --- the packaged book ------------------------------------------------------------------------------------


def served_prices(contract):
    sizes = [s for s in contract.sizes if s != "auto"]
    if contract.free_form:
        sizes += ["1536x864", "2048x2048", "3840x2160"]
    return [(q, s) for q in contract.qualities if q != "auto" for s in sizes]


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.id)
def test_every_model_is_priced_for_every_size_and_quality_it_serves(catalog, contract):
    for quality, size in served_prices(contract):
        assert price_per_image(catalog[contract.id], quality, size) > 0, (quality, size)


def test_the_packaged_file_holds_prices_as_exact_strings():
    document = json.loads(PACKAGED_PATH.read_text())
    for name, fields in document["models"].items():
        for sizes in fields.get("per_image", {}).values():
            assert all(isinstance(usd, str) for usd in sizes.values()), name
        assert "_source" in fields, f"{name} does not say where its prices come from"


@pytest.mark.parametrize(
    ("model", "rates"),
    [
        # USD per 1M tokens: text in, image in, image out, text out (image out when unpublished).
        ("gpt-image-1", (5, 10, 40, 40)),
        ("gpt-image-1-mini", (2, 2.5, 8, 8)),
        ("gpt-image-1.5", (5, 8, 32, 10)),
        ("chatgpt-image-latest", (5, 8, 32, 10)),
        ("gpt-image-2", (5, 8, 30, 10)),
        ("gpt-image-2-2026-04-21", (5, 8, 30, 10)),
    ],
)
def test_token_rates_of_the_gpt_image_models(model, rates):
    tokens = PACKAGED.model(model).tokens
    micros = (tokens.text_input, tokens.image_input, tokens.image_output, tokens.text_output)
    assert micros == tuple(int(r * 1_000_000) for r in rates)


@pytest.mark.parametrize(
    "model",
    [
        "dall-e-2",
        "dall-e-3",
        "gemini-3.1-flash-image",
        "gemini-3-pro-image",
        "stability.stable-image-core-v1:1",
        "imagegate-local",
    ],
)
def test_per_image_models_have_no_token_rates(model):
    assert PACKAGED.model(model).tokens is None


def test_gpt_image_1_output_token_table():
    tokens = PACKAGED.model("gpt-image-1").tokens
    table = {
        q: [tokens.image_output_tokens(q, w, h) for w, h in ((1024, 1024), (1024, 1536), (1536, 1024))]
        for q in ("low", "medium", "high")
    }
    assert table == {"low": [272, 408, 400], "medium": [1056, 1584, 1568], "high": [4160, 6240, 6208]}


def test_free_form_output_tokens_scale_by_area_and_never_shrink():
    tokens = PACKAGED.model("gpt-image-2").tokens
    assert tokens.image_output_tokens("high", 1024, 1024) == 7024
    # 2048x1024 is twice the area: twice the tokens, exactly.
    assert tokens.image_output_tokens("high", 2048, 1024) == 14048
    # 1536x864 is 1.265625 times the area: 1756 * 1.265625 = 2222.4375, rounded up.
    assert tokens.image_output_tokens("medium", 1536, 864) == 2223
    # Smaller than 1024x1024: the upstream's cost does not fall with the area, so neither does the bound.
    assert tokens.image_output_tokens("low", 1024, 640) == 196


def test_local_price_comes_from_the_environment():
    prices = load_prices(Settings.from_env({"IMAGEGATE_LOCAL_PRICE_USD": "0.005"}))
    local = prices.model("imagegate-local")
    assert [local.per_image("low", 256, 256), local.per_image("high", 2048, 2048)] == [5_000, 5_000]


def test_negative_local_price_is_refused():
    with pytest.raises(ValueError, match="IMAGEGATE_LOCAL_PRICE_USD"):
        load_prices(Settings(local_price_micros=-1))


# --- markup -----------------------------------------------------------------------------------------------


def test_global_and_per_model_markup():
    prices = book({"markup_percent": "20", "models": {"gpt-image-1.5": {"markup_percent": "12.5"}}})
    catalog = build_catalog(prices)
    assert price_per_image(catalog["dall-e-2"], "standard", "1024x1024") == 24_000  # 20_000 * 1.2
    assert price_per_image(catalog["gpt-image-1.5"], "medium", "1024x1024") == 38_250  # 34_000 * 1.125
    # The operator's own local price is sold as set.
    assert price_per_image(catalog["imagegate-local"], "medium", "1024x1024") == LOCAL_PRICE


def test_markup_rounds_up_to_the_micro_dollar():
    prices = book({"markup_percent": "0.0001"})
    # 16_000 * 1.000001 = 16_000.016
    assert prices.model("dall-e-2").per_image("standard", 256, 256) == 16_001
    # 20_000 * 1.000001 = 20_000.02
    assert prices.model("dall-e-2").per_image("standard", 1024, 1024) == 20_001


def test_markup_on_an_area_price_rounds_once():
    prices = book({"models": {"gpt-image-2": {"markup_percent": "2.5"}}})
    # 53_000 * 1536*864/1024**2 * 1.025 = 68_755.078125: one ceiling, not one per step.
    assert prices.model("gpt-image-2").per_image("medium", 1536, 864) == 68_756


def test_a_zero_markup_is_the_plain_price(catalog):
    assert price_per_image(catalog["gpt-image-2"], "high", "1536x864") == 267_047


# --- overrides --------------------------------------------------------------------------------------------


def test_override_replaces_the_fields_it_gives_and_keeps_the_rest():
    hd = {"1024x1024": "0.1", "1792x1024": "0.15", "1024x1792": "0.15"}
    standard = {"1024x1024": "0.05", "1792x1024": "0.09", "1024x1792": "0.09"}
    prices = book({"models": {"dall-e-3": {"per_image": {"standard": standard, "hd": hd}}}})
    assert prices.model("dall-e-3").per_image("hd", 1792, 1024) == 150_000
    assert prices.model("dall-e-3").per_image("standard", 1024, 1024) == 50_000
    assert prices.model("dall-e-2").per_image("standard", 512, 512) == 18_000
    # Replacing gpt-image-1's per-image table keeps its token rates.
    rates = {"text_input": "6", "image_input": "12", "image_output": "48"}
    prices = book({"models": {"gpt-image-1": {"token_rates": rates}}})
    assert prices.model("gpt-image-1").tokens.image_output == 48_000_000
    assert prices.model("gpt-image-1").per_image("low", 1024, 1024) == 11_000


def test_null_turns_token_pricing_off():
    prices = book({"models": {"gpt-image-1.5": {"token_rates": None}}})
    job = make_job(prices, prompt="a fox", model="gpt-image-1.5", quality="high", n=2)
    quote = prices.quote(job)
    assert (quote.token_priced, quote.reserve) == (False, 266_000)
    assert prices.charge(quote, 2, 2, usage(text=10, output=8320)) == 266_000


def test_override_from_a_file_and_from_the_environment(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"markup_percent": "50"}))
    from_file = load_prices(Settings(prices=str(path)))
    from_env = load_prices(Settings.from_env({"IMAGEGATE_PRICES": str(path)}))
    assert from_file.model("dall-e-2").per_image("standard", 1024, 1024) == 30_000
    assert from_env == from_file


RATES = {"text_input": "5", "image_input": "10", "image_output": "40"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"models": {"dall-e-9": {"markup_percent": "5"}}}, "unknown model 'dall-e-9'"),
        ({"models": {"imagegate-local": {"markup_percent": "5"}}}, "IMAGEGATE_LOCAL_PRICE_USD"),
        (
            {"models": {"dall-e-2": {"per_image": {"standard": {"1024x1024": "-0.02"}}}}},
            "cannot be negative",
        ),
        ({"models": {"dall-e-2": {"per_image": {"standard": {"1024x1024": 0.02}}}}}, "as strings"),
        ({"models": {"dall-e-2": {"per_image": {"standard": {"1024x1024": "0.0000001"}}}}}, "micro-dollar"),
        ({"models": {"dall-e-2": {"per_image": {"standard": {"1024x1024": "cheap"}}}}}, "not a USD amount"),
        (
            {"models": {"gpt-image-2": {"per_image": {"low": {"2048x2048": "0.02"}}}}},
            r"gpt-image-2.per_image.low: a 1024x1024 entry is required",
        ),
        (
            {"models": {"dall-e-3": {"per_image": {"standard": {"1024x1024": "0.04"}}}}},
            "dall-e-3: no per_image price for quality 'hd' at 1024x1024",
        ),
        (
            {"models": {"dall-e-2": {"per_image": {"standard": {"1024x1024": "0.02", "1024x1025": "0.02"}}}}},
            "dall-e-2: no size '1024x1025'",
        ),
        (
            {"models": {"dall-e-2": {"per_image": {"hd": {"1024x1024": "0.02"}}}}},
            "dall-e-2: no quality 'hd'",
        ),
        ({"models": {"dall-e-2": {"per_image": {"standard": {"big": "0.02"}}}}}, "'big' is not a size"),
        ({"models": {"dall-e-2": {"price": "0.02"}}}, "dall-e-2: unknown field price"),
        ({"markup": "5"}, "prices: unknown field markup"),
        ({"markup_percent": "-5"}, "non-negative decimal string"),
        ({"markup_percent": 5}, "non-negative decimal string"),
        ({"markup_percent": "five"}, "non-negative decimal string"),
        ({"models": {"dall-e-2": {"markup_percent": "NaN"}}}, "dall-e-2.markup_percent"),
        (
            {"models": {"gpt-image-1": {"token_rates": {"text_input": "5", "image_input": "10"}}}},
            "gpt-image-1.token_rates: missing image_output",
        ),
        (
            {"models": {"gpt-image-1": {"token_rates": {**RATES, "image_output": "-1"}}}},
            "cannot be negative",
        ),
        (
            {"models": {"gpt-image-1": {"image_output_tokens": {"low": {"1024x1024": 0}}}}},
            "at least 1",
        ),
        (
            {"models": {"gpt-image-1": {"image_output_tokens": {"low": {"1024x1024": 272}}}}},
            "image_output_tokens: missing quality high, medium",
        ),
        ({"models": {"gpt-image-1": {"image_output_tokens": None}}}, "need 'image_output_tokens'"),
        ({"models": {"dall-e-2": {"per_image": None}}}, "'per_image' is required"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_overrides_fail_clearly(override, message):
    with pytest.raises(ValueError, match=message):
        load_prices(Settings(prices=json.dumps(override)))


def test_broken_json_fails_at_load():
    with pytest.raises(ValueError):
        load_prices(Settings(prices="{not json"))


# --- quotes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "reserve"),
    [
        ({"model": "dall-e-2", "size": "512x512", "n": 3}, 54_000),
        ({"model": "dall-e-3", "size": "1024x1792", "quality": "hd"}, 120_000),
        ({"model": "imagegate-local", "n": 3}, 6_000),
    ],
)
def test_per_image_models_reserve_per_image_times_n(params, reserve):
    job = make_job(PACKAGED, prompt="a red fox", **params)
    quote = PACKAGED.quote(job)
    assert (quote.reserve, quote.per_image, quote.token_priced) == (reserve, job.price_per_image, False)


def test_token_bound_of_a_generation_by_hand():
    # gpt-image-1.5, high, 1024x1024: text 9 bytes + 32 framing = 41 tokens at $5/1M = 205 micro-USD;
    # output 4160 tokens at $32/1M = 133_120. The bound, 133_325, is above the per-image 133_000.
    quote = PACKAGED.quote(make_job(PACKAGED, prompt="a red fox", model="gpt-image-1.5", quality="high"))
    assert (quote.reserve, quote.per_image, quote.token_priced) == (133_325, 133_000, True)


def test_token_bound_of_a_high_fidelity_edit_by_hand():
    job = make_job(
        PACKAGED,
        "edits",
        images=[upload(width=1536, height=1024)],
        prompt="a red fox",
        model="gpt-image-1.5",
        quality="high",
        size="1024x1536",
        input_fidelity="high",
        n=2,
    )
    # text: 9 bytes + 32 * (1 + 1 image) = 73 tokens                      73 * $5/1M  =     365
    # image in: 1536x1024 -> 768x512, 2 tiles: 85 + 2 * 170 = 425,
    #           + 6240 for high fidelity (the largest high-quality output) = 6665 * $8/1M =  53_320
    # output: 2 images * 6240 tokens = 12_480                          12_480 * $32/1M = 399_360
    quote = PACKAGED.quote(job)
    assert (quote.reserve, quote.per_image) == (453_045, 200_000)


def test_gpt_image_2_reads_inputs_at_high_fidelity_always():
    def reserve(model):
        job = make_job(PACKAGED, "edits", images=[upload(width=64, height=64)], prompt="x", model=model)
        return PACKAGED.quote(job).reserve

    # text (1 + 64 framing) * 5 = 325; input (255 + 7024) * 8 = 58_232; output 1756 * 30 = 52_680.
    assert reserve("gpt-image-2") == 111_237
    # gpt-image-1.5 at its default low fidelity: 325 + 255 * 8 + 1056 * 32 = 36_157, above 34_000.
    assert reserve("gpt-image-1.5") == 36_157


def test_the_mask_counts_as_an_input_image():
    plain = make_job(PACKAGED, "edits", images=[upload()], prompt="x", model="gpt-image-1")
    mask = upload("mask", colour=(0, 0, 0, 0))
    masked = make_job(PACKAGED, "edits", images=[upload()], mask=mask, prompt="x", model="gpt-image-1")
    # One more image: 255 tokens at $10/1M plus 32 framing tokens at $5/1M.
    assert PACKAGED.quote(masked).reserve - PACKAGED.quote(plain).reserve == 2_550 + 160


def test_the_reservation_is_never_below_the_per_image_price():
    # gpt-image-1-mini's token bill for a low image (272 * $8/1M) is far under its $0.005 per image.
    job = make_job(PACKAGED, prompt="x", model="gpt-image-1-mini", quality="low", n=3)
    assert PACKAGED.quote(job).reserve == 15_000


def test_the_prompt_is_bounded_by_its_utf8_bytes():
    ascii_job = make_job(PACKAGED, prompt="a" * 300, model="gpt-image-1", quality="high")
    cjk_job = make_job(PACKAGED, prompt="狐" * 300, model="gpt-image-1", quality="high")
    # 600 more bytes (3 per character) at $5/1M.
    assert PACKAGED.quote(cjk_job).reserve - PACKAGED.quote(ascii_job).reserve == 3_000


def test_markup_applies_to_the_token_bound():
    prices = book({"markup_percent": "10"})
    job = make_job(prices, prompt="a red fox", model="gpt-image-1.5", quality="high")
    # 133_325 * 1.1 = 146_657.5, rounded up.
    assert prices.quote(job).reserve == 146_658


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        (1024, 1024, 255),  # one tile (gpt-image-1 bills 194)
        (512, 512, 255),
        (64, 64, 255),
        (2048, 2048, 255),
        (1920, 1080, 425),  # 910x512: two tiles (gpt-image-1 bills 323)
        (1025, 1024, 425),  # 512.5 rounds up to a second column: never under
        (4000, 100, 765),  # 2048x52 after the box: four tiles in a row
        (1024, 3072, 595),  # 512x1536: three tiles
    ],
)
def test_input_image_token_bound(width, height, tokens):
    assert input_image_tokens(width, height) == tokens


# --- charges ----------------------------------------------------------------------------------------------


def quote_for(prices=PACKAGED, **params):
    params.setdefault("prompt", "a red fox")
    return prices.quote(make_job(prices, **params))


LONG = "a" * 2000  # a prompt long enough that the reservation leaves room above the per-image price


def test_charge_from_usage_by_hand():
    quote = quote_for(prompt=LONG, model="gpt-image-1", quality="high")
    # 2000 text tokens * $5/1M + 4160 image tokens * $40/1M = 10_000 + 166_400 micro-USD.
    assert PACKAGED.charge(quote, 1, 1, usage(text=2000, output=4160)) == 176_400


def test_charge_is_never_below_the_published_per_image_price():
    quote = quote_for(model="gpt-image-1", quality="high")
    # 50 * $5 + 4160 * $40 per 1M = 166_650, under the published $0.167 an image.
    assert PACKAGED.charge(quote, 1, 1, usage(text=50, output=4160)) == 167_000
    # A proxy reporting zero tokens, or chat-style usage, gives nothing away.
    assert PACKAGED.charge(quote, 1, 1, usage(text=0, output=0)) == 167_000
    chat = {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}
    assert PACKAGED.charge(quote, 1, 1, chat) == 167_000


def test_charge_at_fractional_rates_rounds_up_once():
    quote = quote_for(prompt="a" * 3000, model="gpt-image-1-mini", quality="low")
    # 1 * $2 + 3 * $2.50 + 700 * $8 per 1M tokens = 2 + 7.5 + 5600 = 5609.5 micro-USD.
    assert PACKAGED.charge(quote, 1, 1, usage(text=1, image=3, output=700)) == 5_610


def test_charge_with_markup():
    prices = book({"markup_percent": "12.5"})
    quote = quote_for(prices, prompt=LONG, model="gpt-image-1", quality="high")
    # (2001 * 5 + 4160 * 40) * 1.125 = 176_405 * 1.125 = 198_455.625, rounded up.
    assert prices.charge(quote, 1, 1, usage(text=2001, output=4160)) == 198_456


def test_output_text_tokens_are_charged():
    quote = quote_for(prompt=LONG, model="gpt-image-1.5", quality="high")
    # gpt-image-1.5 publishes $10/1M for text out; gpt-image-1 none, so its image-out rate applies.
    assert PACKAGED.charge(quote, 1, 1, usage(text=10, output=4160, output_text=100)) == 50 + 133_120 + 1_000
    quote = quote_for(prompt=LONG, model="gpt-image-1", quality="high")
    assert PACKAGED.charge(quote, 1, 1, usage(text=10, output=4160, output_text=100)) == 50 + 166_400 + 4_000


def test_usage_without_a_breakdown_is_charged_at_the_dearer_rate():
    quote = quote_for(prompt=LONG, model="gpt-image-1", quality="high")
    # 100 input tokens at the image rate ($10/1M, not text's $5), 4200 output at image out ($40/1M).
    assert PACKAGED.charge(quote, 1, 1, {"input_tokens": 100, "output_tokens": 4200}) == 1_000 + 168_000
    # A breakdown that covers part of the total: the rest at the dearer rate.
    partial = {"input_tokens": 100, "input_tokens_details": {"text_tokens": 60}, "output_tokens": 4200}
    assert PACKAGED.charge(quote, 1, 1, partial) == 60 * 5 + 40 * 10 + 168_000


def test_fewer_images_are_charged_their_reported_usage_not_scaled_again():
    quote = quote_for(model="gpt-image-1.5", quality="medium", n=4)
    # Three of four arrived and the usage covers those three: (10 * $5 + 3300 * $32) per 1M.
    assert PACKAGED.charge(quote, 3, 4, usage(text=10, output=3300)) == 50 + 105_600
    # One arrived with usage under its published price: the per-image price.
    assert PACKAGED.charge(quote, 1, 4, usage(text=10, output=1056)) == 34_000


def test_charge_is_capped_at_the_reservation():
    quote = quote_for(model="gpt-image-1.5", quality="low")
    assert PACKAGED.charge(quote, 1, 1, usage(text=10, output=1_000_000)) == quote.reserve


def test_charge_without_usage_is_per_image():
    quote = quote_for(model="gpt-image-1.5", quality="medium", n=3)
    assert PACKAGED.charge(quote, 2, 3, None) == 68_000
    assert PACKAGED.charge(quote, 2, 3, {}) == 68_000


@pytest.mark.parametrize(
    "bad",
    [
        {"input_tokens": "10", "output_tokens": 1056},
        {"input_tokens": -1, "output_tokens": 1056},
        {"input_tokens": 10, "output_tokens": True},
        {"input_tokens": 10, "output_tokens": 1056, "output_tokens_details": ["image_tokens"]},
        ["input_tokens"],
    ],
)
def test_malformed_usage_falls_back_to_per_image(bad):
    quote = quote_for(model="gpt-image-1.5", quality="medium")
    assert PACKAGED.charge(quote, 1, 1, bad) == 34_000


def test_per_image_models_ignore_usage():
    quote = quote_for(model="dall-e-2", n=2)
    assert PACKAGED.charge(quote, 2, 2, usage(text=10, output=10_000_000)) == 40_000


def test_nothing_delivered_costs_nothing():
    quote = quote_for(model="gpt-image-1.5", quality="high", n=2)
    assert PACKAGED.charge(quote, 0, 2, usage(text=10, output=8320)) == 0


WORST_CASES = [
    {"model": "gpt-image-1", "quality": "high", "size": "1024x1536", "n": 3},
    {"model": "gpt-image-1-mini", "quality": "high", "size": "1536x1024", "n": 10},
    {"model": "gpt-image-1.5", "quality": "low", "n": 1},
    {"model": "gpt-image-2", "quality": "high", "size": "3840x2160", "n": 2},
    {"model": "gpt-image-2", "quality": "medium", "size": "1024x640", "n": 1},
    {"endpoint": "edits", "images": [upload(width=1920, height=1080)] * 3, "model": "gpt-image-1"},
    {
        "endpoint": "edits",
        "images": [upload(width=900, height=600)],
        "input_fidelity": "high",
        "n": 4,
        "model": "gpt-image-1.5",
    },
    {
        "endpoint": "edits",
        "images": [upload(width=300, height=2000)],
        "model": "gpt-image-2",
        "quality": "high",
    },
]


@pytest.mark.parametrize("params", WORST_CASES)
@pytest.mark.parametrize("markup", ["0", "33.3"])
def test_the_bound_covers_the_worst_case_usage(params, markup):
    prices = book({"markup_percent": markup})
    params = {"prompt": "ein Fuchs im Schnee, 雪の中の狐", **params}
    job = make_job(prices, **params)
    tokens = prices.model(job.contract.id).tokens
    # gpt-image-2 reads every input at high fidelity.
    high = job.input_fidelity == "high" or job.contract.id.startswith("gpt-image-2")
    fidelity = max(tokens.output_tokens.values()) if high else 0
    worst = usage(
        text=len(job.prompt.encode()) + 32 * (1 + len(job.images)),
        image=sum(input_image_tokens(i.width, i.height) + fidelity for i in job.images),
        output=job.n * tokens.image_output_tokens(job.quality, job.width, job.height),
    )
    quote = prices.quote(job)
    charge = prices.charge(quote, job.n, job.n, worst)
    assert quote.reserve >= charge
    # The bound is tight: the worst case costs the reservation unless the per-image floor lifted it.
    assert charge == quote.reserve or quote.reserve == quote.per_image * job.n
    # Real usage as OpenAI reports it (65 + 129 per input tile, the table's output) stays under it.
    real = usage(text=len(job.prompt), image=194 * len(job.images), output=worst["output_tokens"])
    assert prices.charge(quote, job.n, job.n, real) <= quote.reserve


# --- routes that translate a contract (issue 8, item 2) ----------------------------------------------------


def _dated_routes():
    """(model, upstream model, route options, days) for every route the router would use, on every date the
    catalog names (and the day before each): the model's own routes while they live, then the successors
    its price covers, as `Router.plan` chooses them."""
    from datetime import timedelta

    from imagegate.catalog.lifecycle import plan

    catalog = load_catalog(Settings(local_price_micros=LOCAL_PRICE))
    dates = catalog.lifecycles.named_dates()
    days = sorted({d + timedelta(days=k) for d in dates for k in (-1, 0)})
    found = {}
    for day in days:
        for model_id in catalog.models:
            contract = catalog.contracts[model_id]
            for endpoint in sorted(contract.endpoints):
                chosen = plan(
                    catalog.routes[model_id],
                    catalog.lifecycles,
                    day,
                    lambda s, c=contract, e=endpoint: PACKAGED.covers(c, e, s.model, s.options),
                )
                for spec in chosen.routes:
                    if spec.provider != "local":
                        key = (model_id, spec.model, json.dumps(dict(spec.options), sort_keys=True))
                        found.setdefault(key, set()).add(day)
    return [(m, u, json.loads(o), sorted(d)) for (m, u, o), d in sorted(found.items())]


def _worst_jobs(contract):
    """The dearest requests a contract allows, per endpoint, quality and size: the most images out, the
    longest prompt, the most and largest inputs at high fidelity where it has one."""
    sizes = [s for s in contract.sizes if s != "auto"] or ["1024x1024"]
    if contract.free_form is not None:
        sizes.append("3840x2160")
    for endpoint in sorted(contract.endpoints):
        for quality in [q for q in contract.qualities if q != "auto"] or [None]:
            for size in sizes:
                params = {"model": contract.id, "size": size, "n": contract.n_max}
                if quality:
                    params["quality"] = quality
                if endpoint != "variations":
                    params["prompt"] = "\u00e9" * contract.prompt_max  # two UTF-8 bytes a character
                if contract.input_fidelity and endpoint == "edits":
                    params["input_fidelity"] = "high"
                images = []
                if endpoint != "generations":
                    count = contract.max_input_images if endpoint == "edits" else 1
                    side = 1024 if contract.square_png_input else 2048
                    images = [upload(width=side, height=side)] * count
                try:
                    yield make_job(PACKAGED, endpoint, images, None, **params)
                except APIError:
                    continue  # a combination the contract refuses (variations take no quality)


def _upstream_bill(job, tokens, quality):
    """The upstream's bill in micro-USD for the most tokens this job can cost it, and that usage."""
    from imagegate.catalog.prices import FRAMING_TOKENS

    high = tokens.always_high_fidelity or job.input_fidelity == "high"
    fidelity = max(tokens.output_tokens.values()) if high else 0
    text = len(job.prompt.encode()) + FRAMING_TOKENS * (1 + len(job.images))
    image = sum(input_image_tokens(i.width, i.height) + fidelity for i in job.images)
    output = job.n * tokens.image_output_tokens(quality, job.width, job.height)
    cost = text * tokens.text_input + image * tokens.image_input + output * tokens.image_output
    return -(-cost // 1_000_000), usage(text=text, image=image, output=output)


DATED_ROUTES = _dated_routes()


def test_the_dated_routes_include_the_successors():
    served = {(m, u) for m, u, _, _ in DATED_ROUTES}
    assert {("dall-e-2", "dall-e-2"), ("dall-e-2", "gpt-image-1-mini"), ("dall-e-2", "gpt-image-2")} <= served
    assert {("gpt-image-1.5", "gpt-image-1.5"), ("gpt-image-1.5", "gpt-image-2")} <= served


@pytest.mark.parametrize(("model_id", "upstream", "options", "days"), DATED_ROUTES, ids=lambda v: str(v)[:40])
def test_no_route_sells_below_its_upstreams_cost_on_any_date(model_id, upstream, options, days):
    """Every route on every date the catalog names: the reservation and the charge for the dearest request
    cover what the upstream model bills for it (its tokens, or its own per-image price)."""
    from imagegate.catalog.contracts import upstream_quality

    price = PACKAGED.model(upstream)
    checked = 0
    for job in _worst_jobs(build_catalog(PACKAGED)[model_id]):
        quote = PACKAGED.quote(job, [(upstream, options)])
        # A model's own upstream makes the quality asked; a successor the one it translates to.
        quality = job.quality if upstream == model_id else upstream_quality(job.quality, options)
        if price.tokens is not None:
            bill, worst = _upstream_bill(job, price.tokens, quality)
        else:
            # Its own per-image price at that quality, or the dearest of its table (an untranslated quality).
            qualities = {q for q, _ in price.per_image_micros}
            chosen = [quality] if quality in qualities else qualities
            bill, worst = job.n * max(price.per_image(q, job.width, job.height) for q in chosen), None
        assert quote.reserve >= bill, (days[0], job.endpoint, job.quality, job.size)
        assert PACKAGED.charge(quote, job.n, job.n, worst) >= bill, (days[0], job.endpoint, job.quality)
        checked += 1
    assert checked > 0


def test_a_translated_contract_is_charged_its_upstreams_tokens():
    """The measured case: 16 high-fidelity inputs to gpt-image-1 (served by gpt-image-1.5) charged $0.011."""
    job = make_job(
        PACKAGED,
        "edits",
        [upload(width=1536, height=1024)] * 16,
        None,
        model="gpt-image-1",
        prompt="x",
        quality="low",
        input_fidelity="high",
    )
    quote = PACKAGED.quote(job, [("gpt-image-1.5", {})])
    reported = usage(text=40, image=16 * 6_400, output=272)
    charged = PACKAGED.charge(quote, 1, 1, reported)
    # gpt-image-1's own image-input rate ($10/1M) is the dearer: 102,400 tokens of it alone are $1.024.
    assert charged >= 1_024_000
    assert charged <= quote.reserve
