"""Test support shared by unit, integration and e2e tests: tiny random models, fake engines and runners, the
step driver, checkpoint writers. Imported as `tests.support.<module>` (pytest.ini puts the repository root on
sys.path)."""
