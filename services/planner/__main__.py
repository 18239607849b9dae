"""`python -m services.planner`"""

from charter.runtime.service import run
from services.planner.service import NAME, build

if __name__ == "__main__":
    run(NAME, build)
