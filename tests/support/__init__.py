"""The code behind the fixtures of ``tests/conftest.py``: test servers, a Spark standalone
cluster, and writers of test inputs. Test modules use the fixtures, not these modules."""
