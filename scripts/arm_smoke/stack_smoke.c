// The bundled stack's pipeline in C on llama.cpp's C API, for the aarch64 smoke test
// (scripts/arm_cross_smoke.sh runs it under qemu-user; Python is not needed on the target).
//
//   stack_smoke BASE.gguf QUESTIONS.txt THREADS NAME LORA MAX_TOKENS TEMPLATE [NAME LORA ...]...
//
// Each stage: its template with {question} and earlier stages' {name} filled in, tokenized as
// one text (BOS if the model asks for one), evaluated in 32-token micro-batches on one context
// whose KV cache is cleared first and whose adapter is the stage's, then greedy generation up to
// MAX_TOKENS or a newline (the bundled stack's stop string), output stripped of whitespace.
// Prints one line per question: the stages' outputs joined by " | ". llama.cpp's log (system
// info, buffer types, repacked tensors) goes to stderr; LORA "-" means no adapter.

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#define MAX_STAGES 8
#define MAX_TEXT 8192

struct stage {
    const char *name;
    const char *template;
    int max_tokens;
    struct llama_adapter_lora *lora;
    char output[MAX_TEXT];
};

static void render(const struct stage *st, const char *question, struct stage *stages, int n,
                   char *out) {
    const char *p = st->template;
    out[0] = '\0';
    while (*p) {
        if (*p == '{') {
            const char *end = strchr(p, '}');
            char key[64] = {0};
            size_t len = end ? (size_t)(end - p - 1) : 0;
            if (end && len < sizeof key) {
                memcpy(key, p + 1, len);
                const char *value = NULL;
                if (strcmp(key, "question") == 0) value = question;
                for (int i = 0; i < n; i++)
                    if (strcmp(key, stages[i].name) == 0) value = stages[i].output;
                if (value) {
                    strncat(out, value, MAX_TEXT - strlen(out) - 1);
                    p = end + 1;
                    continue;
                }
            }
        }
        size_t at = strlen(out);
        if (at + 1 < MAX_TEXT) {
            out[at] = *p;
            out[at + 1] = '\0';
        }
        p++;
    }
}

static void strip(char *s) {
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    size_t i = 0;
    while (s[i] && isspace((unsigned char)s[i])) i++;
    memmove(s, s + i, n - i + 1);
}

static int decode_failed(const char *stage) {
    fprintf(stderr, "stack_smoke: stage %s: llama_decode failed\n", stage);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 8 || (argc - 4) % 4 != 0 || (argc - 4) / 4 > MAX_STAGES || atoi(argv[3]) < 1) {
        fprintf(stderr, "usage: %s BASE QUESTIONS THREADS NAME LORA MAX_TOKENS TEMPLATE...\n",
                argv[0]);
        return 2;
    }
    llama_backend_init();
    fprintf(stderr, "system_info: %s\n", llama_print_system_info());
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "stack_smoke: cannot load %s\n", argv[1]);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 256; // the bundled stack's n_ctx (stack.toml [defaults])
    cp.n_batch = 32;
    cp.n_ubatch = 32;
    cp.n_threads = cp.n_threads_batch = atoi(argv[3]);
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    struct stage stages[MAX_STAGES];
    int n_stages = (argc - 4) / 4;
    for (int i = 0; i < n_stages; i++) {
        stages[i].name = argv[4 + 4 * i];
        const char *lora = argv[5 + 4 * i];
        stages[i].lora = strcmp(lora, "-") ? llama_adapter_lora_init(model, lora) : NULL;
        if (strcmp(lora, "-") && !stages[i].lora) {
            fprintf(stderr, "stack_smoke: cannot load adapter %s\n", lora);
            return 1;
        }
        stages[i].max_tokens = atoi(argv[6 + 4 * i]);
        stages[i].template = argv[7 + 4 * i];
    }
    FILE *questions = fopen(argv[2], "r");
    if (!questions) {
        fprintf(stderr, "stack_smoke: cannot read %s\n", argv[2]);
        return 1;
    }
    char question[MAX_TEXT], prompt[MAX_TEXT];
    llama_token tokens[MAX_TEXT];
    struct llama_sampler *greedy = llama_sampler_init_greedy();
    while (fgets(question, sizeof question, questions)) {
        question[strcspn(question, "\n")] = '\0';
        for (int s = 0; s < n_stages; s++) {
            struct stage *st = &stages[s];
            float scale = 1.0f;
            llama_set_adapters_lora(ctx, st->lora ? &st->lora : NULL, st->lora ? 1 : 0,
                                    st->lora ? &scale : NULL);
            llama_memory_clear(llama_get_memory(ctx), true);
            render(st, question, stages, s, prompt);
            int n =
                llama_tokenize(vocab, prompt, (int)strlen(prompt), tokens, MAX_TEXT, true, false);
            if (n < 0 || n + st->max_tokens > (int)cp.n_ctx) {
                fprintf(stderr, "stack_smoke: stage %s: prompt too long\n", st->name);
                return 1;
            }
            for (int at = 0; at < n; at += 32) {
                int len = n - at < 32 ? n - at : 32;
                struct llama_batch batch = llama_batch_get_one(tokens + at, len);
                if (llama_decode(ctx, batch)) return decode_failed(st->name);
            }
            st->output[0] = '\0';
            for (int i = 0; i < st->max_tokens; i++) {
                llama_token tok = llama_sampler_sample(greedy, ctx, -1);
                if (llama_vocab_is_eog(vocab, tok)) break;
                char piece[256];
                int len = llama_token_to_piece(vocab, tok, piece, sizeof piece - 1, 0, false);
                piece[len > 0 ? len : 0] = '\0';
                char *newline = strchr(piece, '\n');
                if (newline) *newline = '\0';
                strncat(st->output, piece, MAX_TEXT - strlen(st->output) - 1);
                if (newline) break;
                struct llama_batch next = llama_batch_get_one(&tok, 1);
                if (llama_decode(ctx, next)) return decode_failed(st->name);
            }
            strip(st->output);
            printf("%s%s", s ? " | " : "", st->output);
        }
        printf("\n");
        fflush(stdout);
    }
    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
