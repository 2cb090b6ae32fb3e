/* The call of an atom from idle through its inbox, in one C function
 * (hermesx/runtime/native.py builds it; docs/PERFORMANCE.md "Seventh round").
 *
 * It does what WasmInstance.invoke's inbox path does in Python, for the case
 * that ends cleanly: copy the method and arguments into the inbox, fill the
 * four i32 arguments of hx_invoke, call wasmtime_func_call_unchecked with the
 * GIL released (as ctypes does: the epoch ticker and the atom's host functions
 * need it), and, when hx_invoke returned 0 with a reply in the slot that lies
 * inside the memory and the payload limit, empty the slot and return the
 * reply's bytes. Anything else (an error, a trap, another status, no reply, a
 * slot pointing elsewhere) returns None and leaves the slot and the args
 * array as wasmtime left them, for the Python code to read exactly as it reads
 * them after its own crossing; an error pointer is stored for it at the
 * address given. It keeps no state beyond the addresses it was made with.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef void *(*call_unchecked_fn)(void *ctx, void *func, void *args, size_t nargs, void **trap);

typedef struct {
    PyObject_HEAD
    call_unchecked_fn call;
    void *ctx;
    void *func;      /* the hx_invoke export's wasmtime_func_t */
    uint8_t *args;   /* wasmtime_val_raw_t[nargs], 16 bytes a slot */
    size_t nargs;
    void **trap;     /* wasm_trap_t *, filled by wasmtime when the call traps */
    void **error;    /* where an error pointer is stored for the caller */
    uint8_t *base;   /* the linear memory's base (it never moves) */
    uint32_t inbox;  /* offset of the inbox's inputs */
    uint32_t cap;    /* their capacity */
    uint32_t slot;   /* offset of the reply slot: i32 pointer, i32 length */
    uint64_t size;   /* the memory's size as last known (it only grows) */
    int64_t max_payload;
} Crossing;

static int Crossing_init(Crossing *self, PyObject *args, PyObject *kwds) {
    unsigned long long call, ctx, func, raw, trap, error, base, size;
    unsigned int inbox, cap, slot;
    Py_ssize_t nargs;
    long long max_payload;
    if (!PyArg_ParseTuple(args, "KKKKnKKKIIIKL", &call, &ctx, &func, &raw, &nargs, &trap,
                          &error, &base, &inbox, &cap, &slot, &size, &max_payload))
        return -1;
    if (nargs < 4) {
        PyErr_SetString(PyExc_ValueError, "hx_invoke takes four arguments");
        return -1;
    }
    self->call = (call_unchecked_fn)(uintptr_t)call;
    self->ctx = (void *)(uintptr_t)ctx;
    self->func = (void *)(uintptr_t)func;
    self->args = (uint8_t *)(uintptr_t)raw;
    self->nargs = (size_t)nargs;
    self->trap = (void **)(uintptr_t)trap;
    self->error = (void **)(uintptr_t)error;
    self->base = (uint8_t *)(uintptr_t)base;
    self->inbox = inbox;
    self->cap = cap;
    self->slot = slot;
    self->size = size;
    self->max_payload = max_payload;
    return 0;
}

static inline void put_i32(uint8_t *args, int index, uint32_t value) {
    __builtin_memcpy(args + 16 * index, &value, 4);
}

/* Copies ``obj`` (bytes, or anything with a buffer) to ``to``, at most ``room`` bytes;
 * its length, or -1 with an exception set. */
static Py_ssize_t copy_in(PyObject *obj, uint8_t *to, uint64_t room) {
    if (PyBytes_CheckExact(obj)) {
        Py_ssize_t len = PyBytes_GET_SIZE(obj);
        if ((uint64_t)len > room) goto too_long;
        __builtin_memcpy(to, PyBytes_AS_STRING(obj), (size_t)len);
        return len;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return -1;
    Py_ssize_t len = view.len;
    if ((uint64_t)len <= room) __builtin_memcpy(to, view.buf, (size_t)len);
    PyBuffer_Release(&view);
    if ((uint64_t)len <= room) return len;
too_long:
    PyErr_SetString(PyExc_ValueError, "the inputs do not fit the inbox");
    return -1;
}

static PyObject *Crossing_invoke(Crossing *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 2) {
        PyErr_SetString(PyExc_TypeError, "invoke(method, args) takes two arguments");
        return NULL;
    }
    uint8_t *in = self->base + self->inbox;
    Py_ssize_t mlen = copy_in(argv[0], in, self->cap);
    if (mlen < 0) return NULL;
    Py_ssize_t alen = copy_in(argv[1], in + mlen, self->cap - (uint64_t)mlen);
    if (alen < 0) return NULL;
    put_i32(self->args, 0, self->inbox);
    put_i32(self->args, 1, (uint32_t)mlen);
    put_i32(self->args, 2, self->inbox + (uint32_t)mlen);
    put_i32(self->args, 3, (uint32_t)alen);
    void *error;
    Py_BEGIN_ALLOW_THREADS
    error = self->call(self->ctx, self->func, self->args, self->nargs, self->trap);
    Py_END_ALLOW_THREADS
    if (error != NULL) {
        *self->error = error;
        Py_RETURN_NONE;
    }
    int32_t status, reply[2];
    __builtin_memcpy(&status, self->args, 4);
    if (*self->trap != NULL || status != 0) Py_RETURN_NONE;
    uint8_t *slot = self->base + self->slot;
    __builtin_memcpy(reply, slot, 8);
    uint64_t ptr = (uint32_t)reply[0];
    int64_t len = reply[1];
    if (len < 0 || len > self->max_payload || ptr + (uint64_t)len > self->size) Py_RETURN_NONE;
    reply[1] = -1; /* the slot emptied: the reply is taken */
    __builtin_memcpy(slot + 4, &reply[1], 4);
    return PyBytes_FromStringAndSize((const char *)self->base + ptr, (Py_ssize_t)len);
}

static PyObject *Crossing_set_size(Crossing *self, PyObject *arg) {
    unsigned long long size = PyLong_AsUnsignedLongLong(arg);
    if (size == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    self->size = size;
    Py_RETURN_NONE;
}

static PyMethodDef Crossing_methods[] = {
    {"invoke", (PyCFunction)(void (*)(void))Crossing_invoke, METH_FASTCALL,
     "Call hx_invoke through the inbox; the reply's bytes, or None (see the module)."},
    {"set_size", (PyCFunction)Crossing_set_size, METH_O, "The memory's size, after it grew."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CrossingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hermesx_crossing.Crossing",
    .tp_basicsize = sizeof(Crossing),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One atom's call from idle through its inbox.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Crossing_init,
    .tp_methods = Crossing_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "hermesx_crossing", "An atom's call through its inbox, in C.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_hermesx_crossing(void) {
    if (PyType_Ready(&CrossingType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&CrossingType);
    if (PyModule_AddObject(m, "Crossing", (PyObject *)&CrossingType) < 0) {
        Py_DECREF(&CrossingType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
