/* pth.h: reading PyTorch's saved state_dicts (torch.save of an OrderedDict of
 * tensors, the `.pth` files weights are published as) without Python.
 *
 * Two containers are read: the zip archive torch.save writes since PyTorch 1.6
 * (entries `<prefix>/data.pkl`, `<prefix>/data/<key>`, stored without
 * compression, each checked against its CRC-32), and the older "legacy" stream
 * (five pickles: magic number, protocol 1001, system info, the object, the
 * storage keys; then each storage as an int64 element count and its bytes).
 *
 * The pickle is run by a restricted machine that knows only what a state_dict
 * needs: the opcodes of protocols 2 to 4 that build ints, strings, tuples,
 * lists, dicts and memo entries, and three kinds of global:
 * collections.OrderedDict, torch._utils._rebuild_tensor_v2 and the torch
 * <Type>Storage classes (as persistent ids). Anything else (any other global,
 * a call of anything else, an object that is not an OrderedDict of tensors) is
 * refused: opening a file never runs code from it. Tensors must be contiguous
 * (row-major strides) and lie inside their storage; the int64 `num_batches_tracked`
 * counters of BatchNorm are read like any tensor (dtype I64) and simply unused by
 * callers that want floats.
 *
 * The file is untrusted: ddpm_pth_open_memory validates the container, the
 * pickle and every tensor against its storage before it returns, so the
 * accessors need no further checks. Every error sets one message
 * "<name>: <problem>" (error.h). */
#ifndef DDPM_PTH_H
#define DDPM_PTH_H

#include <stddef.h>
#include <stdint.h>

enum { DDPM_PTH_MAX_DIMS = 8 };

typedef enum {
    DDPM_PTH_F32,
    DDPM_PTH_F64,
    DDPM_PTH_F16,
    DDPM_PTH_BF16,
    DDPM_PTH_I64,
    DDPM_PTH_I32,
    DDPM_PTH_I16,
    DDPM_PTH_I8,
    DDPM_PTH_U8,
    DDPM_PTH_BOOL,
} ddpm_pth_dtype;

typedef struct {
    const char *name;
    ddpm_pth_dtype dtype;
    int ndim;
    int64_t shape[DDPM_PTH_MAX_DIMS];
    int64_t n_elements; /* prod(shape), 1 for ndim 0 */
} ddpm_pth_tensor;

typedef struct ddpm_pth ddpm_pth;

/* Reads and validates the file at path (DDPM_EIO when it cannot be read,
 * DDPM_EFORMAT when it is not a state_dict this reader accepts, DDPM_ENOMEM). */
int ddpm_pth_open(ddpm_pth **out, const char *path);
/* The same over bytes in memory (copied); name stands for the path in messages. */
int ddpm_pth_open_memory(ddpm_pth **out, const void *bytes, size_t n_bytes, const char *name);
void ddpm_pth_close(ddpm_pth *f);

/* Tensors in the order of the state_dict. */
int ddpm_pth_count(const ddpm_pth *f);
const ddpm_pth_tensor *ddpm_pth_at(const ddpm_pth *f, int i); /* NULL if out of range */
/* NULL when there is no tensor of that name (sets no message). */
const ddpm_pth_tensor *ddpm_pth_find(const ddpm_pth *f, const char *name);
/* Copies the F32 tensor `name` into dst[n_expected]. DDPM_EFORMAT with a message
 * naming the file and the tensor when it is missing, not float32, or does not
 * hold n_expected values. */
int ddpm_pth_read_f32(const ddpm_pth *f, const char *name, float *dst, size_t n_expected);

/* SHA-256 of the file's bytes as 64 hex digits (what names the weights). */
const char *ddpm_pth_sha256(const ddpm_pth *f);
const char *ddpm_pth_name(const ddpm_pth *f);

#endif
