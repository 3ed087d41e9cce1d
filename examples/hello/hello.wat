;; The smallest job: write one line to stdout and exit 0.
;; WebAssembly text, so it needs no toolchain: mvm converts it on the host.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from a WebAssembly job in its own VM\n")
  (func (export "_start")
    ;; one iovec at 0: the text at 16, 43 bytes; the count written goes to 8
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 43))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
