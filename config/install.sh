#!/bin/sh
# Install fetcher as a systemd service: a virtualenv in /opt/fetcher, the unit, the env file.
# Run as root from the repository: `make install-service`.
set -eu
cd "$(dirname "$0")/.."
python3 -m venv /opt/fetcher
/opt/fetcher/bin/pip install --quiet .
install -d -m 0755 /etc/fetcher
[ -e /etc/fetcher/fetcher.env ] || install -m 0640 config/fetcher.env /etc/fetcher/fetcher.env
install -m 0644 config/fetcher.service /etc/systemd/system/fetcher.service
systemctl daemon-reload
echo "installed. Next: edit /etc/fetcher/fetcher.env, then"
echo "  systemctl enable --now fetcher && journalctl -u fetcher -f"
