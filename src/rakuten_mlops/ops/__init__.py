"""Operations: what the platform shows its operators (Grafana dashboards)."""
