"""`python -m services.executor`"""

from charter.runtime.service import run
from services.executor.service import NAME, build

if __name__ == "__main__":
    run(NAME, build)
