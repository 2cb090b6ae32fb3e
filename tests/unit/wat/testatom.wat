;; Test atom for the runtime's unit tests (ABI v1, hand-written).
;; Methods (msgpack args):
;;   incr N -> counter += N, replies counter      get -> counter
;;   echo X -> X                                  fail -> status 1, "boom"
;;   trap -> unreachable                          spin -> loops forever
;;   hog -> grows memory until refused, then traps
;;   big -> replies 4096 bytes                    slow N -> spins N*1000 rounds, counter += 1, replies counter
;;   ints -> number of interrupts handled          futs -> number of futures handled
;;   slowints N -> spins, then replies ints (no blocking point in between)
;;   recv -> hx.recv(2000 ms), replies ints        yield -> hx.yield(), replies ints
;;   call -> hx.invoke("other", "get", nil): replies the out buffer, returns invoke's status
;;   async -> hx.invoke_async("other", "get", nil), replies the future id
;;   kvput X -> kv["k"] = X                        kvget -> kv["k"] or status 1
;;   fill -> grows memory by 1 MiB and fills it    guid -> self_guid as msgpack str
;;   log -> logs "hello" at info level
;;   deeptrap -> pushes a 1 KiB frame on the shadow stack, then traps
;;   spinyield N -> spins, calls hx.yield, then replies ints
;;   sp -> the shadow stack pointer (exported as __stack_pointer)
;; Interrupts: count++ at 1024, last code at 1028, payload stored in kv["i"].
;; Futures: count++ at 1032, last status at 1036, payload stored in kv["f"].
(module
  (import "hx" "reply" (func $reply (param i32 i32)))
  (import "hx" "log" (func $log (param i32 i32 i32)))
  (import "hx" "invoke" (func $invoke (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "hx" "invoke_async" (func $invoke_async (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "hx" "recv" (func $recv (param i32) (result i32)))
  (import "hx" "yield" (func $yield (result i32)))
  (import "hx" "kv_get" (func $kv_get (param i32 i32 i32) (result i32)))
  (import "hx" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (import "hx" "self_guid" (func $self_guid (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $counter (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 8192))
  ;; A C-style shadow stack: 2048..8192, growing down.
  (global $sp (export "__stack_pointer") (mut i32) (i32.const 8192))
  (data (i32.const 16) "incr")   ;; 16
  (data (i32.const 20) "get")    ;; 20
  (data (i32.const 24) "echo")   ;; 24
  (data (i32.const 28) "fail")   ;; 28
  (data (i32.const 32) "trap")   ;; 32
  (data (i32.const 36) "spin")   ;; 36
  (data (i32.const 40) "hog")    ;; 40
  (data (i32.const 44) "big")    ;; 44
  (data (i32.const 48) "slow")   ;; 48
  (data (i32.const 52) "ints")   ;; 52
  (data (i32.const 56) "futs")   ;; 56
  (data (i32.const 64) "slowints") ;; 64
  (data (i32.const 72) "recv")   ;; 72
  (data (i32.const 76) "yield")  ;; 76
  (data (i32.const 84) "call")   ;; 84
  (data (i32.const 88) "async")  ;; 88
  (data (i32.const 96) "kvput")  ;; 96
  (data (i32.const 104) "kvget") ;; 104
  (data (i32.const 112) "fill")  ;; 112
  (data (i32.const 116) "guid")  ;; 116
  (data (i32.const 120) "log")   ;; 120
  (data (i32.const 124) "boom")  ;; 124
  (data (i32.const 128) "other") ;; 128
  (data (i32.const 136) "hello") ;; 136
  (data (i32.const 144) "k")     ;; 144
  (data (i32.const 145) "i")     ;; 145
  (data (i32.const 146) "f")     ;; 146
  (data (i32.const 147) "\c0")   ;; 147 msgpack nil
  (data (i32.const 148) "deeptrap") ;; 148
  (data (i32.const 156) "sp")    ;; 156
  (data (i32.const 160) "spinyield") ;; 160

  (func (export "hx_abi_version") (result i32) (i32.const 1))

  (func $alloc (export "hx_alloc") (param $len i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $len)) (i32.const 131072))
      (then (global.set $heap (i32.const 8192))))
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $len)) (i32.const 131072))
      (then (return (i32.const 0))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $len)) (i32.const 7)) (i32.const -8)))
    (local.get $p))

  (func $eq (param $a i32) (param $al i32) (param $b i32) (param $bl i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $al) (local.get $bl)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $al)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  ;; msgpack unsigned int (fixint, uint8/16/32) or nil -> i32 (nil and empty = 1)
  (func $uint (param $p i32) (param $l i32) (result i32)
    (local $t i32)
    (if (i32.eqz (local.get $l)) (then (return (i32.const 1))))
    (local.set $t (i32.load8_u (local.get $p)))
    (if (i32.lt_u (local.get $t) (i32.const 128)) (then (return (local.get $t))))
    (if (i32.eq (local.get $t) (i32.const 0xc0)) (then (return (i32.const 1))))
    (if (i32.eq (local.get $t) (i32.const 0xcc)) (then (return (i32.load8_u offset=1 (local.get $p)))))
    (if (i32.eq (local.get $t) (i32.const 0xcd))
      (then (return (i32.or (i32.shl (i32.load8_u offset=1 (local.get $p)) (i32.const 8))
                            (i32.load8_u offset=2 (local.get $p))))))
    (if (i32.eq (local.get $t) (i32.const 0xce))
      (then (return (i32.or (i32.or (i32.shl (i32.load8_u offset=1 (local.get $p)) (i32.const 24))
                                    (i32.shl (i32.load8_u offset=2 (local.get $p)) (i32.const 16)))
                            (i32.or (i32.shl (i32.load8_u offset=3 (local.get $p)) (i32.const 8))
                                    (i32.load8_u offset=4 (local.get $p)))))))
    (unreachable))

  ;; reply with msgpack uint n (written at 0..4)
  (func $reply_uint (param $n i32)
    (if (i32.lt_u (local.get $n) (i32.const 128))
      (then (i32.store8 (i32.const 0) (local.get $n)) (call $reply (i32.const 0) (i32.const 1)) (return)))
    (if (i32.lt_u (local.get $n) (i32.const 65536))
      (then
        (i32.store8 (i32.const 0) (i32.const 0xcd))
        (i32.store8 (i32.const 1) (i32.shr_u (local.get $n) (i32.const 8)))
        (i32.store8 (i32.const 2) (local.get $n))
        (call $reply (i32.const 0) (i32.const 3)) (return)))
    (i32.store8 (i32.const 0) (i32.const 0xce))
    (i32.store8 (i32.const 1) (i32.shr_u (local.get $n) (i32.const 24)))
    (i32.store8 (i32.const 2) (i32.shr_u (local.get $n) (i32.const 16)))
    (i32.store8 (i32.const 3) (i32.shr_u (local.get $n) (i32.const 8)))
    (i32.store8 (i32.const 4) (local.get $n))
    (call $reply (i32.const 0) (i32.const 5)))

  (func $spin (param $rounds i32)
    (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $rounds)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))))

  (func (export "hx_init") (param $p i32) (param $l i32) (result i32)
    (if (i32.gt_u (local.get $l) (i32.const 0))
      (then (global.set $counter (call $uint (local.get $p) (local.get $l)))))
    (i32.const 0))

  (func (export "hx_interrupt") (param $code i32) (param $p i32) (param $l i32)
    (i32.store (i32.const 1024) (i32.add (i32.load (i32.const 1024)) (i32.const 1)))
    (i32.store (i32.const 1028) (local.get $code))
    (drop (call $kv_put (i32.const 145) (i32.const 1) (local.get $p) (local.get $l))))

  (func (export "hx_future") (param $id i32) (param $status i32) (param $p i32) (param $l i32)
    (i32.store (i32.const 1032) (i32.add (i32.load (i32.const 1032)) (i32.const 1)))
    (i32.store (i32.const 1036) (local.get $status))
    (drop (call $kv_put (i32.const 146) (i32.const 1) (local.get $p) (local.get $l))))

  (func (export "hx_invoke") (param $m i32) (param $ml i32) (param $a i32) (param $al i32) (result i32)
    (local $i i32) (local $status i32) (local $base i32)
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 16) (i32.const 4)) ;; incr
      (then
        (global.set $counter (i32.add (global.get $counter) (call $uint (local.get $a) (local.get $al))))
        (call $reply_uint (global.get $counter)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 20) (i32.const 3)) ;; get
      (then (call $reply_uint (global.get $counter)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 24) (i32.const 4)) ;; echo
      (then (call $reply (local.get $a) (local.get $al)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 28) (i32.const 4)) ;; fail
      (then (call $reply (i32.const 124) (i32.const 4)) (return (i32.const 1))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 32) (i32.const 4)) ;; trap
      (then (unreachable)))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 36) (i32.const 4)) ;; spin
      (then (loop $forever (br $forever))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 40) (i32.const 3)) ;; hog
      (then
        (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
        (unreachable)))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 44) (i32.const 3)) ;; big
      (then (call $reply (i32.const 0) (i32.const 4096)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 48) (i32.const 4)) ;; slow
      (then
        (call $spin (i32.mul (call $uint (local.get $a) (local.get $al)) (i32.const 1000)))
        (global.set $counter (i32.add (global.get $counter) (i32.const 1)))
        (call $reply_uint (global.get $counter)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 52) (i32.const 4)) ;; ints
      (then (call $reply_uint (i32.load (i32.const 1024))) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 56) (i32.const 4)) ;; futs
      (then (call $reply_uint (i32.load (i32.const 1032))) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 64) (i32.const 8)) ;; slowints
      (then
        (call $spin (i32.mul (call $uint (local.get $a) (local.get $al)) (i32.const 1000)))
        (call $reply_uint (i32.load (i32.const 1024))) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 72) (i32.const 4)) ;; recv
      (then
        (drop (call $recv (i32.const 2000)))
        (call $reply_uint (i32.load (i32.const 1024))) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 76) (i32.const 5)) ;; yield
      (then
        (drop (call $yield))
        (call $reply_uint (i32.load (i32.const 1024))) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 84) (i32.const 4)) ;; call
      (then
        (local.set $status (call $invoke (i32.const 128) (i32.const 5) (i32.const 20) (i32.const 3)
                                        (i32.const 147) (i32.const 1) (i32.const 8)))
        (call $reply (i32.load (i32.const 8)) (i32.load (i32.const 12)))
        (return (local.get $status))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 88) (i32.const 5)) ;; async
      (then
        (call $reply_uint (call $invoke_async (i32.const 128) (i32.const 5) (i32.const 20) (i32.const 3)
                                              (i32.const 147) (i32.const 1)))
        (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 96) (i32.const 5)) ;; kvput
      (then
        (drop (call $kv_put (i32.const 144) (i32.const 1) (local.get $a) (local.get $al)))
        (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 104) (i32.const 5)) ;; kvget
      (then
        (if (call $kv_get (i32.const 144) (i32.const 1) (i32.const 8))
          (then (call $reply (i32.const 124) (i32.const 4)) (return (i32.const 1))))
        (call $reply (i32.load (i32.const 8)) (i32.load (i32.const 12)))
        (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 112) (i32.const 4)) ;; fill
      (then
        (local.set $base (i32.mul (memory.grow (i32.const 16)) (i32.const 65536)))
        (block $done (loop $l
          (br_if $done (i32.ge_u (local.get $i) (i32.const 1048576)))
          (i32.store (i32.add (local.get $base) (local.get $i))
                     (i32.mul (i32.add (local.get $i) (i32.const 1)) (i32.const -1640531535)))
          (local.set $i (i32.add (local.get $i) (i32.const 4)))
          (br $l)))
        (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 116) (i32.const 4)) ;; guid
      (then
        (local.set $i (call $self_guid (i32.const 257) (i32.const 200)))
        (i32.store8 (i32.const 255) (i32.const 0xd9))
        (i32.store8 (i32.const 256) (local.get $i))
        (call $reply (i32.const 255) (i32.add (local.get $i) (i32.const 2)))
        (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 120) (i32.const 3)) ;; log
      (then (call $log (i32.const 1) (i32.const 136) (i32.const 5)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 148) (i32.const 8)) ;; deeptrap
      (then
        (global.set $sp (i32.sub (global.get $sp) (i32.const 1024)))
        (i32.store (global.get $sp) (i32.const 7))
        (unreachable)))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 156) (i32.const 2)) ;; sp
      (then (call $reply_uint (global.get $sp)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 160) (i32.const 9)) ;; spinyield
      (then
        (call $spin (i32.mul (call $uint (local.get $a) (local.get $al)) (i32.const 1000)))
        (drop (call $yield))
        (call $reply_uint (i32.load (i32.const 1024))) (return (i32.const 0))))
    (call $reply (i32.const 124) (i32.const 4))
    (i32.const 2))
)
