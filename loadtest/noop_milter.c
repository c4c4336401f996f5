/*
 * The limit for any milter: a C libmilter milter that does nothing, negotiating the
 * protocol steps, no-reply flags and macro lists it is given (loadtest.milter passes
 * sendwarden's), so the comparison prices only what sendwarden does in its callbacks.
 *
 *   noop_milter SOCKET STEPS STEP_BITS [STAGE=MACROS ...]
 *
 * STEPS: the SMFIP_* bits asked for; STEP_BITS: every bit the negotiation decides
 * (offered bits outside it are kept, as sendwarden does). STAGE: SMFIM_* number.
 * Built by loadtest.milter with: cc -O2 -o noop_milter noop_milter.c -lmilter -pthread
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long steps, step_bits, granted;
static int symlists;
static char **symlist_args;

/* A step negotiated without a reply must not be answered. */
static sfsistat reply(unsigned long no_reply_bit) {
    return (granted & no_reply_bit) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                             unsigned long f2, unsigned long f3, unsigned long *pf0,
                             unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
    (void)f2; (void)f3;
    *pf0 = f0;
    *pf1 = granted = f1 & (steps | ~step_bits);
    *pf2 = *pf3 = 0;
    for (int i = 0; i < symlists; i++) {
        char *spec = strdup(symlist_args[i]);
        char *eq = strchr(spec, '=');
        if (eq != NULL) {
            *eq = '\0';
            smfi_setsymlist(ctx, atoi(spec), eq + 1);
        }
        free(spec);
    }
    return SMFIS_CONTINUE;
}

static sfsistat on_connect(SMFICTX *c, char *h, _SOCK_ADDR *a) {
    (void)c; (void)h; (void)a; return reply(SMFIP_NR_CONN);
}
static sfsistat on_envfrom(SMFICTX *c, char **a) { (void)c; (void)a; return reply(SMFIP_NR_MAIL); }
static sfsistat on_envrcpt(SMFICTX *c, char **a) { (void)c; (void)a; return reply(SMFIP_NR_RCPT); }
static sfsistat on_data(SMFICTX *c) { (void)c; return reply(SMFIP_NR_DATA); }
static sfsistat on_header(SMFICTX *c, char *n, char *v) {
    (void)c; (void)n; (void)v; return reply(SMFIP_NR_HDR);
}
static sfsistat on_body(SMFICTX *c, unsigned char *b, size_t n) {
    (void)c; (void)b; (void)n; return reply(SMFIP_NR_BODY);
}
static sfsistat on_eom(SMFICTX *c) { (void)c; return SMFIS_CONTINUE; }

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s SOCKET STEPS STEP_BITS [STAGE=MACROS ...]\n", argv[0]);
        return 2;
    }
    steps = strtoul(argv[2], NULL, 0);
    step_bits = strtoul(argv[3], NULL, 0);
    symlists = argc - 4;
    symlist_args = argv + 4;
    struct smfiDesc desc = {
        .xxfi_name = "noop-c",
        .xxfi_version = SMFI_VERSION,
        .xxfi_flags = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_DELRCPT,
        .xxfi_connect = on_connect,
        .xxfi_envfrom = on_envfrom,
        .xxfi_envrcpt = on_envrcpt,
        .xxfi_header = on_header,
        .xxfi_body = on_body,
        .xxfi_eom = on_eom,
        .xxfi_data = on_data,
        .xxfi_negotiate = on_negotiate,
    };
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
        fprintf(stderr, "noop_milter: cannot set up %s\n", argv[1]);
        return 1;
    }
    smfi_setbacklog(128);
    if (smfi_opensocket(1) == MI_FAILURE) {
        fprintf(stderr, "noop_milter: cannot open %s\n", argv[1]);
        return 1;
    }
    printf("noop C milter listening on %s\n", argv[1]);
    fflush(stdout);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
