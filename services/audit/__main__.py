"""`python -m services.audit`"""

from charter.runtime.service import run
from services.audit.service import NAME, build

if __name__ == "__main__":
    run(NAME, build)
