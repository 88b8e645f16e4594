"""The Worker base class's policy helpers, which both backends rely on."""

from workermanager import Worker


class Fixed(Worker):
    max_retries = 2
    retry_delay = 7


class Computed(Worker):
    funcname = "Sandbox::Worker::C"

    def retry_delay(self, failures):
        return 10 * failures


def test_function_name_defaults_to_class_path():
    assert Fixed.function_name() == "test_worker.Fixed"
    assert Computed.function_name() == "Sandbox::Worker::C"


def test_retry_delay_number_or_method():
    assert Fixed.retry_delay_for(1) == 7
    assert Computed.retry_delay_for(3) == 30


def test_should_retry_counts_failures_against_max_retries():
    assert Fixed.should_retry(1) and Fixed.should_retry(2)
    assert not Fixed.should_retry(3)
    assert not Worker.should_retry(1)


def test_timeout_defaults_to_grab_for():
    class Slow(Worker):
        grab_for = 60

    class Capped(Worker):
        timeout = 5

    assert Slow.job_timeout() == 60
    assert Capped.job_timeout() == 5
