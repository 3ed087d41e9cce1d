;; A memory hog: grows its linear memory 1 MiB at a time, touching every new
;; page, until the guest's RAM (the job's memory limit) runs out. The job
;; ends with "out of memory"; it never gets to print anything else.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "grew\n")
  (func (export "_start")
    (local $base i32) (local $page i32)
    (loop $more
      ;; 16 pages = 1 MiB; memory.grow returns the old size in pages, -1 on failure
      (local.set $base (memory.grow (i32.const 16)))
      (if (i32.eq (local.get $base) (i32.const -1)) (then (unreachable)))
      (local.set $page (i32.const 0))
      (loop $touch
        (i32.store8 (i32.add (i32.shl (local.get $base) (i32.const 16)) (i32.shl (local.get $page) (i32.const 12))) (i32.const 1))
        (local.set $page (i32.add (local.get $page) (i32.const 1)))
        (br_if $touch (i32.lt_u (local.get $page) (i32.const 256))))
      (br $more))))
