"""Parallel requests from one account, over HTTP against moto's server: the balance is never overdrawn.

Real threads race through uvicorn to the emulator. With the emulator serving requests concurrently (as
moto's own ThreadedMotoServer does), this failed in about one run in five by letting an eleventh request
through; it guards the emulator's per-request isolation as much as the reservation itself.
"""

from concurrent.futures import ThreadPoolExecutor

import openai

DALLE2_256 = 16_000
REQUESTS = 50
AFFORDABLE = 10


def test_parallel_requests_never_overdraw_a_balance(stack, new_user):
    user = new_user(stack, balance=AFFORDABLE * DALLE2_256)

    def generate(_):
        try:
            user.client.images.generate(
                model="dall-e-2", prompt="x", size="256x256", response_format="b64_json"
            )
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        statuses = list(pool.map(generate, range(REQUESTS)))

    assert sorted(statuses) == [200] * AFFORDABLE + [402] * (REQUESTS - AFFORDABLE)
    assert user.balance() == 0
