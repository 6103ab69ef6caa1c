"""The cloud relay: outbound link, command verification, spool, shadows, schedules."""
