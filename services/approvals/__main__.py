"""`python -m services.approvals`"""

from charter.runtime.service import run
from services.approvals.service import NAME, build

if __name__ == "__main__":
    run(NAME, build)
