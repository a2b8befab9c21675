import asyncio


async def test_async_tests_run_on_their_own_loop() -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    assert loop.is_running()
