/* The ctypes API of the layer library (capi.cc), read by
 * caffedata/mxnet/library.py, which mirrors these structs field for field.
 * Every function fills a caller-owned struct; text fields are NUL-terminated
 * UTF-8, cut at a character boundary when too long.  Functions returning int
 * return 0 on success and -1 with the message in `error`. */
#ifndef CAFFEDATA_CAPI_H_
#define CAFFEDATA_CAPI_H_

#include <stdint.h>

#define CAFFEDATA_CAPI_VERSION 1
#define CAFFEDATA_MAX_BLOBS 64
#define CAFFEDATA_MAX_AXES 32
#define CAFFEDATA_ERROR_LEN 4096

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int32_t origin; /* 0 USER, 1 LAYER_DEFAULT, 2 FRAMEWORK (see Filler in layer.h) */
  char type[32];
  double value, min, max, mean, std;
  int64_t sparse;
  char variance_norm[16];
} caffedata_filler_t;

typedef struct {
  int32_t num_blobs, is_loss, num_state_blobs, num_no_grad_bottoms;
  int32_t exact_bottoms, min_bottoms, max_bottoms; /* -1 = any */
  int32_t exact_tops, min_tops, max_tops;
  int32_t blob_axes[CAFFEDATA_MAX_BLOBS];
  int32_t state_blobs[CAFFEDATA_MAX_BLOBS];
  int32_t no_grad_bottoms[CAFFEDATA_MAX_BLOBS];
  caffedata_filler_t fillers[CAFFEDATA_MAX_BLOBS];
  char error[CAFFEDATA_ERROR_LEN];
} caffedata_layer_info_t;

typedef struct {
  int32_t num_blobs, num_tops;
  int32_t blob_ndim[CAFFEDATA_MAX_BLOBS];
  int64_t blob_dims[CAFFEDATA_MAX_BLOBS][CAFFEDATA_MAX_AXES];
  int32_t top_ndim[CAFFEDATA_MAX_BLOBS];
  int64_t top_dims[CAFFEDATA_MAX_BLOBS][CAFFEDATA_MAX_AXES];
  char error[CAFFEDATA_ERROR_LEN];
} caffedata_layer_shapes_t;

typedef struct {
  char core[64];
  char config[512];
  char note[256];
} caffedata_blas_info_t;

int caffedata_capi_version(void);
/* Registered layer types, sorted; names stay valid for the process. */
int caffedata_layer_type_count(void);
const char* caffedata_layer_type_name(int index);
void caffedata_blas_info(caffedata_blas_info_t* out);
/* Facts about one layer from its prototxt alone (bottom 0 assumed to have
 * bottom0_axes axes; num_bottoms = the op's num_data, -1 when unknown). */
int caffedata_layer_info(const char* prototxt, int bottom0_axes, int num_bottoms, caffedata_layer_info_t* out);
/* Caffe's shape logic (SetUp) for the given bottoms: dims flattened, ndims
 * per bottom. */
int caffedata_layer_shapes(const char* prototxt, const int64_t* dims, const int32_t* ndims, int nbottom,
                           caffedata_layer_shapes_t* out);

#ifdef __cplusplus
}
#endif

#endif /* CAFFEDATA_CAPI_H_ */
