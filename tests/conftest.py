pytest_plugins = ["tests.sshd_fixture"]
