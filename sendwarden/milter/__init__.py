"""The pymilter adapter: libmilter callbacks -> facts -> pipeline -> SMTP reply."""
