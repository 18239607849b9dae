"""`python -m services.policy`"""

from charter.runtime.service import run
from services.policy.service import NAME, build

if __name__ == "__main__":
    run(NAME, build)
