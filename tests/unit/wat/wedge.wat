;; Test atom for deadlines and wait cycles (ABI v1, hand-written).
;; Methods (msgpack args):
;;   block        -> hx.recv(-1): waits for an interrupt for ever (or until
;;                   the call's deadline), then replies nil
;;   ping         -> counter += 1, replies counter
;;   relay TARGET -> holds the atom in hx.recv(300 ms), then invokes
;;                   TARGET.ping (TARGET a msgpack str); replies its result
;;   spinyield    -> loops on hx.yield for ever (until the call's deadline)
;;   bounce [TARGET, X] -> invokes TARGET.relay X (X a msgpack str), replies its
;;                   result: with X this atom's GUID, a callback into this atom
(module
  (import "hx" "reply" (func $reply (param i32 i32)))
  (import "hx" "invoke" (func $invoke (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "hx" "recv" (func $recv (param i32) (result i32)))
  (import "hx" "yield" (func $yield (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (global $counter (mut i32) (i32.const 0))
  (global $sp (export "__stack_pointer") (mut i32) (i32.const 8192))
  (data (i32.const 16) "block")      ;; 16
  (data (i32.const 24) "ping")       ;; 24
  (data (i32.const 32) "relay")      ;; 32
  (data (i32.const 40) "spinyield")  ;; 40
  (data (i32.const 52) "\c0")        ;; 52 msgpack nil
  (data (i32.const 56) "bounce")     ;; 56

  (func (export "hx_abi_version") (result i32) (i32.const 1))

  (func (export "hx_alloc") (param $len i32) (result i32)
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
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $al)))
      (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                  (i32.load8_u (i32.add (local.get $b) (local.get $i))))
        (then (return (i32.const 0))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (i32.const 1))

  ;; Length of the msgpack str at $p, its bytes at $p + header.
  (func $str_header (param $p i32) (result i32)
    (if (result i32) (i32.eq (i32.and (i32.load8_u (local.get $p)) (i32.const 0xe0)) (i32.const 0xa0))
      (then (i32.const 1)) (else (i32.const 2))))
  (func $str_len (param $p i32) (result i32)
    (if (result i32) (i32.eq (i32.and (i32.load8_u (local.get $p)) (i32.const 0xe0)) (i32.const 0xa0))
      (then (i32.and (i32.load8_u (local.get $p)) (i32.const 0x1f)))
      (else (i32.load8_u (i32.add (local.get $p) (i32.const 1))))))

  (func $reply_uint (param $n i32)
    (if (i32.lt_u (local.get $n) (i32.const 128))
      (then (i32.store8 (i32.const 0) (local.get $n)) (call $reply (i32.const 0) (i32.const 1)) (return)))
    (i32.store8 (i32.const 0) (i32.const 0xce))
    (i32.store8 (i32.const 1) (i32.shr_u (local.get $n) (i32.const 24)))
    (i32.store8 (i32.const 2) (i32.shr_u (local.get $n) (i32.const 16)))
    (i32.store8 (i32.const 3) (i32.shr_u (local.get $n) (i32.const 8)))
    (i32.store8 (i32.const 4) (local.get $n))
    (call $reply (i32.const 0) (i32.const 5)))

  (func (export "hx_invoke") (param $m i32) (param $ml i32) (param $a i32) (param $al i32) (result i32)
    (local $b i32) (local $tp i32) (local $tl i32) (local $status i32)
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 16) (i32.const 5)) ;; block
      (then
        (drop (call $recv (i32.const -1)))
        (call $reply (i32.const 52) (i32.const 1)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 24) (i32.const 4)) ;; ping
      (then
        (global.set $counter (i32.add (global.get $counter) (i32.const 1)))
        (call $reply_uint (global.get $counter)) (return (i32.const 0))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 32) (i32.const 5)) ;; relay
      (then
        ;; msgpack str: fixstr (0xa0-0xbf) or str8 (0xd9 len)
        (local.set $b (i32.load8_u (local.get $a)))
        (if (i32.eq (i32.and (local.get $b) (i32.const 0xe0)) (i32.const 0xa0))
          (then (local.set $tl (i32.and (local.get $b) (i32.const 0x1f)))
                (local.set $tp (i32.add (local.get $a) (i32.const 1))))
          (else (local.set $tl (i32.load8_u (i32.add (local.get $a) (i32.const 1))))
                (local.set $tp (i32.add (local.get $a) (i32.const 2)))))
        (drop (call $recv (i32.const 300)))
        (local.set $status (call $invoke (local.get $tp) (local.get $tl) (i32.const 24) (i32.const 4)
                                         (i32.const 52) (i32.const 1) (i32.const 8)))
        (call $reply (i32.load (i32.const 8)) (i32.load (i32.const 12)))
        (return (local.get $status))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 56) (i32.const 6)) ;; bounce
      (then
        ;; [TARGET, X]: skip the fixarray byte
        (local.set $tp (i32.add (local.get $a) (i32.const 1)))
        (local.set $tl (call $str_len (local.get $tp)))
        (local.set $b (i32.add (i32.add (local.get $tp) (call $str_header (local.get $tp))) (local.get $tl)))
        (local.set $status (call $invoke
          (i32.add (local.get $tp) (call $str_header (local.get $tp))) (local.get $tl)
          (i32.const 32) (i32.const 5)
          (local.get $b) (i32.add (call $str_header (local.get $b)) (call $str_len (local.get $b)))
          (i32.const 8)))
        (call $reply (i32.load (i32.const 8)) (i32.load (i32.const 12)))
        (return (local.get $status))))
    (if (call $eq (local.get $m) (local.get $ml) (i32.const 40) (i32.const 9)) ;; spinyield
      (then
        (loop $forever (drop (call $yield)) (br $forever))))
    (i32.const 1))
)
