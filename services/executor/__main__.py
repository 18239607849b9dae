"""`python -m services.executor`"""

from charter.config import Settings
from charter.runtime.service import run
from services.executor.service import NAME, build

if __name__ == "__main__":
    # A pool's executors are a service of their own: their own consumer group, producer id and
    # readiness, so each pool reads every approved action and runs only its own tools.
    pool = Settings().executor_pool
    run(f"{NAME}-{pool}" if pool else NAME, build)
