;; A job that writes several outputs under /out: a file, a file in a new
;; directory, and 64 KiB of binary data. mvm brings them back into out/.
;; (File descriptor 4 is the /out directory the runtime preopens; programs
;; built with wasi-libc find it by name through fd_prestat_dir_name.)
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory"
    (func $mkdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close"
    (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "result.txt")
  (data (i32.const 1040) "42\n")
  (data (i32.const 1056) "logs")
  (data (i32.const 1072) "logs/run.log")
  (data (i32.const 1088) "ran to the end\n")
  (data (i32.const 1120) "data.bin")
  (data (i32.const 1136) "wrote 3 outputs\n")
  ;; Creates (or truncates) /out/<path> and writes data to it; exits 1 on failure.
  (func $write_file (param $path i32) (param $path_len i32) (param $data i32) (param $len i32)
    (if (call $path_open (i32.const 4) (i32.const 0) (local.get $path) (local.get $path_len)
          (i32.const 9) (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 200))
      (then (call $proc_exit (i32.const 1))))
    (i32.store (i32.const 208) (local.get $data))
    (i32.store (i32.const 212) (local.get $len))
    (if (call $fd_write (i32.load (i32.const 200)) (i32.const 208) (i32.const 1) (i32.const 216))
      (then (call $proc_exit (i32.const 1))))
    (drop (call $fd_close (i32.load (i32.const 200)))))
  (func (export "_start")
    (local $i i32)
    (call $write_file (i32.const 1024) (i32.const 10) (i32.const 1040) (i32.const 3))
    (if (call $mkdir (i32.const 4) (i32.const 1056) (i32.const 4))
      (then (call $proc_exit (i32.const 1))))
    (call $write_file (i32.const 1072) (i32.const 12) (i32.const 1088) (i32.const 15))
    ;; 64 KiB at 65536: byte i is i mod 256
    (loop $fill
      (i32.store8 (i32.add (i32.const 65536) (local.get $i)) (local.get $i))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 65536))))
    (call $write_file (i32.const 1120) (i32.const 8) (i32.const 65536) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 1136))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
