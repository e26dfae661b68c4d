/*
 * wal_crc: verifies the CRC-32C (xl_crc) of many complete PostgreSQL WAL records in one call.
 *
 * Why native: the WAL writer checks every record, and records are a few hundred bytes, so a call per record
 * into a CRC package costs more than the CRC itself (~100 ns of call overhead plus a view per record, against
 * ~25 ns of SSE 4.2 work). The JS decoder still parses and checks every header and page; it hands this
 * module only the offsets of records that lie whole inside one buffer, a batch at a time.
 *
 * A record at offset h with total length t = xl_tot_len (little-endian u32 at h) is good when
 * CRC-32C(record[24, t) ++ record[0, 20)) equals the u32 at h + 20, as PostgreSQL computes it.
 *
 * verifyRecords(data: Uint8Array, starts: Int32Array, count: number) -> number
 *   the index of the first record whose CRC differs, or -1 when all `count` match. Throws RangeError when
 *   a record does not lie inside `data` (the caller's bug; nothing is read outside the buffer).
 * hardware: boolean, whether this CPU has the SSE 4.2 crc32 instruction; without it verifyRecords throws
 *   and the caller keeps its per-record path.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define RECORD_HEADER_BYTES 24
#define RECORD_CRC_OFFSET 20

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_SSE42_BUILD 1

__attribute__((target("sse4.2"))) static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n) {
  while (n >= 8) {
    uint64_t word;
    memcpy(&word, p, 8);
    crc = (uint32_t)_mm_crc32_u64(crc, word);
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    crc = _mm_crc32_u8(crc, *p);
    p++;
    n--;
  }
  return crc;
}

static bool hardware_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}
#else
#define HAVE_SSE42_BUILD 0
static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n) {
  (void)p;
  (void)n;
  return crc;
}
static bool hardware_supported(void) { return false; }
#endif

static bool g_hardware = false;

static uint32_t read_u32le(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static napi_value throw_error(napi_env env, bool range, const char *message) {
  if (range) napi_throw_range_error(env, NULL, message);
  else napi_throw_type_error(env, NULL, message);
  return NULL;
}

static napi_value verify_records(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) return throw_error(env, false, "verifyRecords(data, starts, count)");
  if (!g_hardware) return throw_error(env, false, "verifyRecords: this CPU has no SSE 4.2 crc32 instruction");

  napi_typedarray_type type;
  size_t data_length;
  void *data_raw;
  bool is_typedarray = false;
  if (napi_is_typedarray(env, argv[0], &is_typedarray) != napi_ok || !is_typedarray ||
      napi_get_typedarray_info(env, argv[0], &type, &data_length, &data_raw, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    return throw_error(env, false, "verifyRecords: data must be a Uint8Array");
  }
  size_t starts_length;
  void *starts_raw;
  if (napi_is_typedarray(env, argv[1], &is_typedarray) != napi_ok || !is_typedarray ||
      napi_get_typedarray_info(env, argv[1], &type, &starts_length, &starts_raw, NULL, NULL) != napi_ok || type != napi_int32_array) {
    return throw_error(env, false, "verifyRecords: starts must be an Int32Array");
  }
  uint32_t count;
  if (napi_get_value_uint32(env, argv[2], &count) != napi_ok) return throw_error(env, false, "verifyRecords: count must be a number");
  if (count > starts_length) return throw_error(env, true, "verifyRecords: count exceeds starts");

  const uint8_t *data = (const uint8_t *)data_raw;
  const int32_t *starts = (const int32_t *)starts_raw;
  int64_t failed = -1;
  for (uint32_t i = 0; i < count; i++) {
    int64_t start = starts[i];
    if (start < 0 || (uint64_t)start + RECORD_HEADER_BYTES > data_length) return throw_error(env, true, "verifyRecords: a record header lies outside data");
    const uint8_t *record = data + start;
    uint32_t total = read_u32le(record);
    if (total < RECORD_HEADER_BYTES || (uint64_t)start + total > data_length) return throw_error(env, true, "verifyRecords: a record lies outside data");
    uint32_t crc = crc32c_update(0xFFFFFFFFu, record + RECORD_HEADER_BYTES, total - RECORD_HEADER_BYTES);
    crc = crc32c_update(crc, record, RECORD_CRC_OFFSET) ^ 0xFFFFFFFFu;
    if (crc != read_u32le(record + RECORD_CRC_OFFSET)) {
      failed = i;
      break;
    }
  }
  napi_value result;
  napi_create_int64(env, failed, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  g_hardware = HAVE_SSE42_BUILD && hardware_supported();
  napi_value fn;
  napi_value hardware;
  if (napi_create_function(env, "verifyRecords", NAPI_AUTO_LENGTH, verify_records, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "verifyRecords", fn) != napi_ok ||
      napi_get_boolean(env, g_hardware, &hardware) != napi_ok ||
      napi_set_named_property(env, exports, "hardware", hardware) != napi_ok) {
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
