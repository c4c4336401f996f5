"""The SMTP policy proxy: the pipeline for MTAs without a milter API (Exim), and for
Postfix administrators who prefer ``smtpd_proxy_filter`` to a milter."""
